"""Methods behind one contract (:class:`~fslib.methods.base.Method`, an ``nn.Module``) and one registry
(:func:`create_method`, :func:`list_methods`; :func:`save_method` and :func:`load_method` keep a fitted one):
the baselines and one module per paper, each registering its methods where they are defined."""
from fslib.methods.base import Method
from fslib.methods.registry import (Knob, Registered, create_method, list_methods, load_method, register_method,
                                    registered, save_method)

from fslib.methods.baselines import LinearProbe, ZeroShot  # isort: skip (registration order: 06's contenders)
from fslib.methods import llu, apex, clip_cite, mamf, smat  # isort: skip

__all__ = ["Method", "Knob", "Registered", "create_method", "list_methods", "load_method",
           "register_method", "registered", "save_method", "ZeroShot", "LinearProbe", "llu", "apex", "clip_cite", "mamf",
           "smat"]
