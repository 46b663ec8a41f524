"""Medical-imaging domain: readers for MedMNIST ``.npz`` files and image folders, preprocessing, and a small ResNet.

Submodules import their heavy dependencies (torch, Pillow, pandas) themselves; importing this package does not.
"""

__all__: list[str] = []
