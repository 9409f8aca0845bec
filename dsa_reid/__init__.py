"""The ``dsa-reid`` console command: one front door over the stages (see :mod:`dsa_reid.cli`)."""
