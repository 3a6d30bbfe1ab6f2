"""The parsers of ``mocbench bench-model`` and ``mocbench sample-model`` (the commands:
:mod:`mocbench.integrations.diffusers.commands`)."""

from __future__ import annotations

from mocbench.config import add_config_arguments


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "bench-model", help="time backends inside a real diffusers video transformer (random or local weights)",
        description="Build a diffusers video transformer from an architecture config (configs/models/*.json; "
                    "random weights, nothing downloaded) or load it from --weights, validate every backend on a "
                    "shrunken input (each layer call against its own float64 reference; backends attending every "
                    "pair also against the model's own attention), time the full forward per backend against the "
                    "model's own attention, measure per-layer fidelity; one row per backend into the result store. "
                    "Needs the diffusers extra. Example: mocbench bench-model configs/models/cogvideox_cpu.yaml "
                    "model.num_layers=1",
    )
    add_config_arguments(p, "YAML bench-model config (see configs/models/)", optional=False)
    p.add_argument("--out", help="result store CSV (default: the config's output, else runs/NAME/results.csv)")
    p.add_argument("--weights", metavar="DIR", help="a local diffusers folder (pipeline with transformer/, or a "
                   "transformer folder) to load instead of random weights; never downloaded")
    p.add_argument("--retry-failed", action="store_true", help="re-measure backends whose row says failed")
    p.add_argument("--retry-skipped", action="store_true", help="re-measure backends whose row says skipped")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep finished rows measured in another environment (code, device, torch or threads "
                        "differ) instead of re-measuring them; reports mark them")

    p = sub.add_parser(
        "sample-model", help="sample a diffusers video pipeline from local weights with a chosen backend",
        description="Load a diffusers pipeline from a local folder (--weights; never downloaded), run the chosen "
                    "backend in its transformer(s) and write sample_XXX.mp4 + metadata.json in the layout "
                    "`mocbench eval` reads. Example: mocbench sample-model configs/models/sample_cogvideox.yaml "
                    "--weights ~/CogVideoX-5b --out runs/cogvideox/moc backend.name=moc backend.params.top_k=2 "
                    "backend.params.causal=false",
    )
    add_config_arguments(p, "YAML sample-model config (see configs/models/sample_*.yaml); optional")
    p.add_argument("--weights", metavar="DIR", required=True, help="local diffusers pipeline folder (model_index.json)")
    p.add_argument("--out", metavar="DIR", required=True, help="samples folder to write")
