"""Check a results folder: every artifact of the config's grid against its manifest.

    python -m knowledge_recovery.cli.verify --configfile config.yaml [--fast]

Lists what is missing, truncated or altered (file hashes recomputed; `--fast`: sizes only) and
records it, so that the next run of the same command sets it aside and rebuilds it. Exit status 1
when something is damaged. Reads only; moves nothing.
"""
from __future__ import annotations

import argparse

from knowledge_recovery.pipeline import integrity
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.paths import Layout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--fast", action="store_true", help="sizes and manifests, no file hashes")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, check_models=False)
    root = Layout(config).root
    states = integrity.scan(config, full=not args.fast)
    print(integrity.report(states))
    rebuild = integrity.to_rebuild(states, {})
    if not rebuild:
        print(f"{root}: nothing to rebuild")
        return 0
    integrity.record_damaged(root, rebuild)
    print(f"{len(rebuild)} job(s) to rebuild, recorded in {root}/{integrity.DAMAGED_RECORD}:")
    print("\n".join(f"  {name}: {'; '.join(why)}" for name, why in rebuild.items()))
    print("Run the same command as before (e.g. `make run`): it sets them aside and rebuilds them.")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
