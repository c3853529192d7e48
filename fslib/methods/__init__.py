"""Methods behind one contract (:class:`~fslib.methods.base.Method`, an ``nn.Module``) and one registry
(:func:`create_method`, :func:`list_methods`): the baselines and one module per paper, each registering
its methods where they are defined."""
from fslib.methods.base import Method, TunedOnValidation
from fslib.methods.registry import Knob, Registered, create_method, list_methods, register_method, registered
from fslib.methods.baselines import LinearProbe, ZeroShot  # isort: skip (registration order: 06's contenders)
from fslib.methods import llu, apex, clip_cite, mamf, smat  # isort: skip

__all__ = ["Method", "TunedOnValidation", "Knob", "Registered", "create_method", "list_methods", "register_method",
           "registered", "ZeroShot", "LinearProbe", "llu", "apex", "clip_cite", "mamf", "smat"]
