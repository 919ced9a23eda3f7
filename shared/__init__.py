"""The project's common library: data, metrics, the segmentation trial base, energy.

Not to be confused with the team folder ``../shared`` outside the repository.
"""
