"""A cell added at the end kills the kernel with SIGKILL.

where: added last
stock: 0
"""
import os
import signal

os.kill(os.getpid(), signal.SIGKILL)
