"""hpcdl's version: a leaf, so that modules which record it (the tuning cache, 'hpcdl info')
do not import the package's top, which imports everything."""

__version__ = "0.1.0"
