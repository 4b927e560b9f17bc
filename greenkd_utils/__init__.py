"""greenkd: reproduce and measure stochastic-temperature knowledge distillation (Rafat et al. 2023).

Where things live:

- ``temperature``  where tau is drawn (``StochasticTemperature``: a new tau ~ U[2, 20] per batch)
- ``losses``       the KD losses (HKD, CMC, DML) and their registry
- ``engine``       the training loop (``train_run``)
- ``carbon``       where energy is measured (``EnergyMeter``) and turned into CO2eq
- ``flops``        training FLOPs counted from real forward and backward passes
- ``store``        where a run is cached (``RunStore``: one folder per config hash)
- ``sweep``        the tuned baseline: one fixed-tau run per grid value, chosen on validation
- ``profiles``     smoke / demo / paper settings (YAML files in ``configs/``)
- ``experiments``  the paper's tables and figures as functions the notebooks call
"""

__version__ = "0.1.0"
