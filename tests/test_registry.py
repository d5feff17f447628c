"""A new source, sink or backend is one module in its package, found by the registry.

Each plug-in below is written as a module into a folder that is added to the package's
``__path__`` (as a module put into ``pipeline/sinks/`` would be found), and a real pipeline run
uses all three: the new URI kind opens the video, the new backend runs every inference call, the
new sink gets every frame. Nothing else is edited or registered by hand.
"""

from __future__ import annotations

import sys
import textwrap
import threading

import pytest

import pipeline.backends
import pipeline.sinks
import pipeline.sources
from pipeline.backends import BACKENDS, backend_names
from pipeline.config import build_config
from pipeline.errors import ConfigError, SourceError
from pipeline.registry import Registry
from pipeline.runtime import Pipeline
from pipeline.sinks import SINKS, sink_names
from pipeline.sources import SOURCES, create_source, source_kind, source_kinds
from tests.conftest import VTEST

PLUGINS = {
    (pipeline.sources, "sample_clips"): f'''
        """Sources of the kind ``sample``: ``sample://vtest`` is the bundled vtest.avi."""
        from pipeline.sources.base import register_source
        from pipeline.sources.file import FileSource

        def claims(uri):
            return uri.startswith("sample://")

        def factory(cfg, sid, stop, on_event):
            return FileSource({str(VTEST)!r}, sid)

        register_source("sample", factory, claims)
        ''',
    (pipeline.backends, "counting_backend"): '''
        """ONNX Runtime, counting the frames it is given."""
        from pipeline.backends.base import register_backend
        from pipeline.backends.onnxruntime import OnnxRuntimeBackend

        class CountingBackend(OnnxRuntimeBackend):
            name = "counting"
            frames = 0

            def infer(self, batch):
                type(self).frames += len(batch)
                return super().infer(batch)

        register_backend("counting", CountingBackend)
        ''',
    (pipeline.sinks, "seq_sink"): '''
        """A sink that keeps each source's frame numbers."""
        from pipeline.sinks import SinkBase, register_sink

        SEEN = {}

        class SeqSink(SinkBase):
            name = "seqs"

            def __init__(self, sid):
                self.seqs = SEEN.setdefault(sid, [])

            def write(self, frame):
                self.seqs.append(frame.seq)
                self.written += 1

            def close(self):
                pass

        register_sink("seqs", lambda src, scfg, ctx: SeqSink(src.id))
        ''',
}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Write each plug-in into a folder on its package's path; remove every trace afterwards."""
    modules = {}
    for (package, name), text in PLUGINS.items():
        folder = tmp_path / package.__name__.rsplit(".", 1)[-1]
        folder.mkdir()
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        modules[name] = f"{package.__name__}.{name}"
    yield modules
    for registry, name in ((SOURCES, "sample"), (BACKENDS, "counting"), (SINKS, "seqs")):
        registry.pop(name, None)
    for module in modules.values():
        sys.modules.pop(module, None)


def test_a_new_source_backend_and_sink_are_one_module_each(plugins, tmp_path):
    assert "sample" in source_kinds() and "counting" in backend_names() and sink_names()[-1] == "seqs"
    assert source_kind("sample://vtest") == "sample" and source_kind("rtsp://cam/x") == "rtsp"
    cfg = build_config({"sources": [{"uri": "sample://vtest", "max_frames": 8}],
                        "backend": {"name": "counting", "max_batch": 2},
                        "output": {"dir": str(tmp_path / "out"), "video": False},
                        "pipeline": {"progress": False}})
    summary = Pipeline(cfg).run()
    assert not summary.errors
    seen = sys.modules[plugins["seq_sink"]].SEEN
    assert seen == {"vtest": list(range(8))}  # the new sink: every frame of the new kind of source
    assert sys.modules[plugins["counting_backend"]].CountingBackend.frames >= 8  # warm-up calls count too
    assert (tmp_path / "out" / "vtest.jsonl").read_text().count("\n") == 8  # the built-in sinks still run


def test_the_registries_forget_a_removed_plugin(plugins):
    assert "sample" in source_kinds()
    del SOURCES["sample"]
    cfg = build_config({"sources": ["sample://vtest"]}).sources[0]
    with pytest.raises(SourceError, match="no source for URIs of kind 'sample'; expected one of file, http, rtsp"):
        create_source(cfg, threading.Event(), lambda event: None)
    del BACKENDS["counting"]
    with pytest.raises(ConfigError, match="backend.name: unknown backend 'counting'; expected one of onnxruntime, "
                                          "tensorrt"):
        pipeline.backends.create_backend("counting", "m.onnx", pipeline.backends.BackendOptions())


def test_registry_lists_by_order_and_refuses_a_name_twice():
    reg: Registry[str] = Registry("thing", "pipeline.decoders", error=KeyError)
    reg.register("late", "c")
    reg.register("first", "a", order=0)
    reg.register("second", "b", order=5)
    assert reg.names() == ["first", "second", "late"] and list(reg.values()) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="thing 'first' is registered twice"):
        reg.register("first", "x", replace=False)
    with pytest.raises(KeyError, match="unknown thing 'nope'; expected one of first, second, late"):
        reg.lookup("nope")
