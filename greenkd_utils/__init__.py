"""greenkd: reproduce and measure stochastic-temperature knowledge distillation (Rafat et al. 2023).

The package is layered; a module imports only from its own layer or a layer below it (bottom to top):

- ``energy``    what a run's energy covers and how it is read: ``energy.meter.EnergyMeter``, phases of the
                metered region (``energy.phases``), reports and CO2 (``energy.report``), FLOPs (``energy.flops``)
- ``core``      the method's pieces: where tau is drawn (``core.temperature.StochasticTemperature``), the KD
                losses and their registry, models, datasets, run configs; data-free KD and detection pieces
- ``runs``      the life of every run (``runs.lifecycle.train``: caching, resume, metering, checkpoints,
                provenance), where a run is cached (``runs.store.RunStore``), the kinds of run
                (``runs.tasks``) and the tuned-tau searches (``runs.sweep``, ``runs.successive_halving``)
- ``analysis``  predictions, metrics, Grad-CAM, inference cost, loss scale, the paired verdict, the figures' style
- ``settings``  smoke / demo / paper profiles (YAML files in ``configs/``) and the notebooks' knobs
- ``paper``     one module per notebook (``paper.table1_carbon_footprint`` ...), and the shared set-up
                (``paper.experiments``)
"""

__version__ = "0.1.0"
