"""Model cards (``*.yaml``) and the small weights this project trains; read by :mod:`workbench.registry`."""
