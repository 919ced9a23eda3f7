"""The project's common library: data, metrics, the segmentation trial base, energy.

Not to be confused with any folder of the same name outside the repository.
"""
