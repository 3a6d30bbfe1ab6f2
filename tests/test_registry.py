"""Registry: names, parameter validation, duplicates, capabilities, and third-party entry points."""

import sys
import textwrap
import warnings
from dataclasses import dataclass

import pytest
import torch

import mocbench
from mocbench import registry
from mocbench.backend import AttentionBackend, Capabilities


@pytest.fixture
def scratch_registry():
    """Lets a test register backends without leaking them into other tests."""
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    registry.reload_entry_points()


def test_unknown_backend_is_a_key_error_listing_known_names():
    with pytest.raises(KeyError) as e:
        mocbench.get_backend("nope")
    msg = str(e.value)
    for name in ("dense", "moc", "shot_local", "frame_window", "strided", "flash_attn", "xformers", "flash_attn4"):
        assert name in msg


def test_builtin_names_are_listed():
    assert {"dense", "moc", "shot_local", "frame_window", "strided"} <= set(mocbench.list_backends())


@pytest.mark.parametrize(
    "name, params, exc, match",
    [
        ("moc", {"topk": 3}, TypeError, "no parameter 'topk'; did you mean 'top_k'"),
        ("moc", {"top_k": "3"}, TypeError, "'top_k' must be int, got '3'"),
        ("moc", {"top_k": True}, TypeError, "'top_k' must be int"),
        ("moc", {"causal": 1}, TypeError, "'causal' must be bool"),
        ("moc", {"top_k": -1}, ValueError, "top_k must be >= 0, got -1"),
        ("moc", {"chunking": "frames:0"}, ValueError, "positive integer"),
        ("moc", {"local_anchor": "none"}, ValueError, "one of 'shot', 'chunk' or None, got 'none'"),
        ("moc", {"local_anchor": 3}, TypeError, "one of 'shot', 'chunk' or None, got 3"),
        ("moc", {"p_drop_off": 1.5}, ValueError, r"p_drop_off must be in \[0, 1\], got 1.5"),
        ("moc", {"impl": "warp"}, ValueError, "impl must be 'auto' or one of"),
        ("dense", {"sdpa_backend": "fast"}, ValueError, "'sdpa_backend' must be one of 'auto', 'math'"),
        ("frame_window", {"window": -1}, ValueError, "window must be >= 0 frames, got -1"),
        ("strided", {"stride": 0}, ValueError, "stride must be >= 1, got 0"),
        ("shot_local", {"top_k": 2}, TypeError, "has no parameter 'top_k'"),
    ],
)
def test_bad_parameters_name_the_parameter(name, params, exc, match):
    with pytest.raises(exc, match=match):
        mocbench.get_backend(name, **params)


def test_float_params_accept_ints():
    assert mocbench.get_backend("moc", p_drop_off=1).params.p_drop_off == 1.0


def test_duplicate_registration_is_an_error(scratch_registry):
    @mocbench.register_backend("scratch_dup", family="test")
    class First(AttentionBackend):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @mocbench.register_backend("scratch_dup", family="test")
        class Second(AttentionBackend):
            pass


def test_register_rejects_non_backend_classes(scratch_registry):
    with pytest.raises(TypeError, match="AttentionBackend subclasses"):
        mocbench.register_backend("scratch_bad", family="test")(object)


def test_declared_capabilities_refuse_with_reasons(scratch_registry):
    @dataclass(frozen=True)
    class P:
        pass

    @mocbench.register_backend("scratch_fp32", family="test", params=P,
                               caps=Capabilities(dtypes=(torch.float32,), max_head_dim=16, backward=False))
    class OnlyFp32(AttentionBackend):
        pass

    b = mocbench.get_backend("scratch_fp32")
    q = torch.randn(1, 1, 4, 32, dtype=torch.float64, requires_grad=True)
    reasons = b.not_supported_reasons(q)
    assert any("dtype float64 not supported" in r for r in reasons)
    assert any("head_dim 32 > max 16" in r for r in reasons)
    assert any("no backward" in r for r in reasons)
    lay = mocbench.TokenLayout.single_shot(text_tokens=0, frames=1, tokens_per_frame=4)
    with pytest.raises(mocbench.UnsupportedError, match="dtype float64 not supported"):
        b(q, q, q, lay)


PLUGIN = textwrap.dedent(
    """
    import torch.nn.functional as F
    import mocbench
    from mocbench.backends.dense import DenseSDPA

    @mocbench.register_backend("plugin_dense", family="dense", params=DenseSDPA.Params)
    class PluginDense(DenseSDPA):
        '''A dense backend shipped by another package.'''
    """
)


def _install_fake_dist(tmp_path, module_name, module_src, entry_name, target):
    (tmp_path / f"{module_name}.py").write_text(module_src)
    dist = tmp_path / f"{module_name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mocbench.backends]\n{entry_name} = {target}\n")


def test_entry_point_backend_is_listed_lazily_and_loaded_on_demand(tmp_path, monkeypatch, scratch_registry):
    _install_fake_dist(tmp_path, "mocbench_fake_plugin", PLUGIN, "plugin_dense", "mocbench_fake_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_entry_points()
    assert "plugin_dense" in mocbench.list_backends()
    assert "mocbench_fake_plugin" not in sys.modules, "listing must not import the plugin"
    b = mocbench.get_backend("plugin_dense")
    assert "mocbench_fake_plugin" in sys.modules
    assert mocbench.backend_spec("plugin_dense").source.startswith("entry point")
    lay = mocbench.TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=3)
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 8) for _ in range(3))
    torch.testing.assert_close(b(q, k, v, lay), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    sys.modules.pop("mocbench_fake_plugin", None)


def test_entry_point_that_registers_nothing_fails_clearly(tmp_path, monkeypatch, scratch_registry):
    _install_fake_dist(tmp_path, "mocbench_empty_plugin", "x = 1\n", "ghost", "mocbench_empty_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_entry_points()
    with pytest.raises(ImportError, match="did not register a backend named 'ghost'"):
        mocbench.get_backend("ghost")
    sys.modules.pop("mocbench_empty_plugin", None)


def test_entry_point_cannot_shadow_a_builtin(tmp_path, monkeypatch, scratch_registry):
    _install_fake_dist(tmp_path, "mocbench_shadow_plugin", "x = 1\n", "moc", "mocbench_shadow_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_entry_points()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = mocbench.list_backends()
    assert names.count("moc") == 1
    assert any("already registered" in str(w.message) for w in caught)
    assert mocbench.backend_spec("moc").source == "builtin"
