"""The training engine, one module per job (LR schedule, early stopping, metric log lines, ...).

Kept free of imports so `import gluonseg.training.<module>` loads only what that module needs.
"""
