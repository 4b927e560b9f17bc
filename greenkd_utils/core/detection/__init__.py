"""Object detection pieces for Table 4's PASCAL VOC column: an SSD teacher on VGG16 distilled into an
SSDLite student on MobileNetV2, with identical anchors so that every anchor's class logits can be distilled.

- ``models``      the detectors (torchvision's SSD heads and default boxes on backbones cut to one grid)
- ``loss``        SSD's multibox loss, exposing the anchors it uses, and KD on those anchors' logits
- ``dataset``     a detection data set in memory: images, boxes, labels, difficult flags; train and test splits
- ``data``        detection data by name: PASCAL VOC 07+12 from a data root (torchvision's VOCDetection layout)
                  or the generated shapes
- ``shapes``      a generated shapes data set for the demo and smoke profiles
- ``evaluation``  VOC2007 11-point mAP at IoU 0.5, difficult objects ignored
- ``config``      frozen run configurations (their hash is the run key in the store)
- ``batches``     training batches with the run's augmentation

The run itself is :mod:`greenkd_utils.runs.tasks.detection`; the table, :mod:`greenkd_utils.paper.table4_detection`.
"""
