"""Service-task functions of the four processes: reviewed Python, data in and data out, no
I/O and no clock. Each module keeps its own registry (``functions``), which
``engine.brokerage.install`` adds to the runtime's."""
