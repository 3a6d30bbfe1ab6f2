"""Lightning video tasks: ShapeShots data, a video DiT with pluggable attention, flow matching, sampling.

Files (one job each): ``shapeshots.py`` (procedural stories), ``data.py`` / ``folder.py`` (data
modules), ``text.py`` (tokenizer, text encoder), ``model.py`` (video DiT), ``flow.py`` (loss and
ODE samplers), ``lightning_module.py`` (tasks), ``config.py`` (structured config), ``train.py``,
``sample.py``, ``media.py`` (mp4 / PNG), ``cli.py`` (``mocbench train`` / ``mocbench sample``).
Importing this package does not import Lightning; import the submodules you need.
"""
