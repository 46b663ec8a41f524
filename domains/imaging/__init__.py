"""Medical-imaging domain: the vision adapter, readers for MedMNIST ``.npz`` files and image folders, preprocessing,
MedResNet and its training script, image concepts, the imaging pipeline and demo.

Submodules import their heavy dependencies (torch, Pillow, pandas) themselves; importing this package does not.
"""

__all__: list[str] = []
