"""Methods behind one interface (:class:`~fslib.methods.base.Method`): baselines and one module per paper."""
from fslib.methods.base import Method
from fslib.methods.baselines import LinearProbe, ZeroShot

__all__ = ["Method", "ZeroShot", "LinearProbe"]
