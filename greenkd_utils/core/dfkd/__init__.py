"""Data-free knowledge distillation pieces (the paper's Table 6): DeepInversion and CMI synthesizers.

- ``config``        ``DFKDConfig`` (a run, hashed into its store key) and ``SynthesisSettings``
- ``objectives``    batch-norm statistics, image priors, adversarial and contrastive terms, memory bank
- ``generator``     CMI's image generator
- ``synthesizers``  ``DeepInversionSynthesizer``, ``CMISynthesizer``: one round = one batch of images
- ``pool``          the in-memory pool of synthesized images the student learns from

The run itself is :mod:`greenkd_utils.runs.tasks.data_free`; the table, :mod:`greenkd_utils.paper.table6_dfkd`.
"""
