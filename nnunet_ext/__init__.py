"""nnunet-ext: UNETR++, SegMamba, SegResMamba and MISSU as nnU-Net v2 trainers.

Importing this package is cheap (no torch): the interpreter start-up hook imports
:mod:`nnunet_ext._startup` in every Python process.
"""

__version__ = "0.1.0"
