"""gluonseg: the SageMaker built-in Semantic Segmentation algorithm, reimplemented on MXNet + GluonCV."""

__version__ = "0.1.0"
