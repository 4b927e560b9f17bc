"""Data-free knowledge distillation (the paper's Table 6): DeepInversion and CMI synthesizers.

- ``config``        ``DFKDConfig`` (a run, hashed into its store key) and ``SynthesisSettings``
- ``objectives``    batch-norm statistics, image priors, adversarial and contrastive terms, memory bank
- ``generator``     CMI's image generator
- ``synthesizers``  ``DeepInversionSynthesizer``, ``CMISynthesizer``: one round = one batch of images
- ``pool``          the in-memory pool of synthesized images the student learns from
- ``trainer``       ``train_dfkd`` (one run, cached), ``tuned_dfkd`` (the tau grid), ``DFKDResult``
- ``experiment``    ``table6`` and the comparison with the paper; settings in ``configs/dfkd.yaml``
- ``figures``       synthesized samples, the synthesis/student split of the bill
"""

from . import figures
from .config import METHODS, DFKDConfig, SynthesisSettings
from .experiment import DFKDSettings, Table6, compare_with_paper, dfkd_config, load_dfkd_settings, table6
from .pool import SyntheticPool
from .synthesizers import CMISynthesizer, DeepInversionSynthesizer, make_synthesizer
from .trainer import DFKDResult, train_dfkd, tuned_dfkd, without_training_images

__all__ = [
    "figures",
    "METHODS",
    "DFKDConfig",
    "SynthesisSettings",
    "DFKDSettings",
    "Table6",
    "compare_with_paper",
    "dfkd_config",
    "load_dfkd_settings",
    "table6",
    "SyntheticPool",
    "CMISynthesizer",
    "DeepInversionSynthesizer",
    "make_synthesizer",
    "DFKDResult",
    "train_dfkd",
    "tuned_dfkd",
    "without_training_images",
]
