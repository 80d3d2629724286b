"""Issue 22 item 3: a key named like a credential is refused whatever its value, which no message shows.

Before, only values of credential-like environment variables were caught: ``+db_password=...``
with no such variable went into config.yaml, identity.json, .hydra/, run.json, W&B and the console.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from specsweep.sweep.credentials import (REDACTED, config_credential_problems, env_secrets, is_secret_name, redact_argument,
                                         refuse_secret_arguments)
from tests.conftest import CONF, FAST, run_train

VALUE = "sk-live-7f3a9c2e4b1d"  # no environment variable holds it


@pytest.mark.parametrize("key", [
    "wandb_api_key", "db_password", "DB_PASSWD", "apikey", "myApiKey", "hf_token", "authtoken", "token",
    "client_secret", "aws_credentials", "logger.api-key", "s3.access_key", "ssh.private_key", "dbpassword",
])
def test_credential_names_are_secret(key: str) -> None:
    assert is_secret_name(key)


@pytest.mark.parametrize("key", [
    "data.eval_tokens", "telemetry.tokens", "tokens_per_s", "max_tokens", "data.shard_tokens", "tokenizer",
    "data.tokenizer", "train_tokens", "val_tokens", "per_layer_keys", "volatile_keys", "TOKENIZERS_PARALLELISM",
    "run_id_exclude", "logger.entity",
])
def test_counts_of_tokens_and_other_keys_are_not(key: str) -> None:
    assert not is_secret_name(key)


def test_no_key_of_the_shipped_configs_is_a_credential() -> None:
    # The rule must leave every real setting alone (conf/**/*.yaml, Hydra's own settings included).
    import yaml

    def keys(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}"
                yield from keys(v, f"{prefix}{k}.")

    found = [(p.relative_to(CONF).as_posix(), k) for p in sorted(CONF.rglob("*.yaml"))
             for k in keys(yaml.safe_load(p.read_text()) or {}) if is_secret_name(str(k))]
    assert len(list(CONF.rglob("*.yaml"))) > 20 and found == []


def test_an_override_named_like_a_credential_is_refused_and_shown_redacted() -> None:
    for arg in (f"+db_password={VALUE}", f"++wandb_api_key={VALUE}", "+hf_token=", f"logger.secret={VALUE}"):
        problem = refuse_secret_arguments(["+preset=smoke", arg], "command-line argument")
        assert problem and VALUE not in problem and f"={REDACTED}" in problem, problem
    assert redact_argument(f"+db_password={VALUE}") == f"+db_password={REDACTED}"
    assert refuse_secret_arguments(["data.eval_tokens=4096", "tokens=3", "+max_tokens=9"]) is None


def test_config_problems_and_labels_read_the_environment_given_or_once() -> None:
    environ = {"HF_TOKEN": VALUE, "OTHER_TOKEN": "short", "PATH": VALUE}
    config = {"a": {"b": f"x{VALUE}y", "n": 3}, "db_password": "z", "c": ["ok", VALUE]}
    assert config_credential_problems(config, environ) == [
        "a.b: holds the value of $HF_TOKEN; credentials stay in the environment",
        "db_password=***: a credential by its name; credentials stay in the environment "
        "(W&B reads WANDB_API_KEY there), never in configs or overrides",
        "c.1: holds the value of $HF_TOKEN; credentials stay in the environment",
    ]
    assert config_credential_problems(config, {}) == config_credential_problems({"db_password": "z"})
    assert redact_argument(f"x={VALUE}", env_secrets(environ)) == f"x={REDACTED}"
    assert redact_argument(f"x={VALUE}", []) == f"x={VALUE}"


def test_a_config_key_named_like_a_credential_is_refused(compose) -> None:
    from specsweep.sweep.grid.spec import ConfigError, build_run_spec

    cfg = compose(list(FAST))
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.logger.api_key = VALUE  # e.g. from a config file: not on the command line
    with pytest.raises(ConfigError) as err:
        build_run_spec(cfg, check_files=False)
    assert f"logger.api_key={REDACTED}" in str(err.value) and VALUE not in str(err.value)


@pytest.mark.parametrize("args", [
    [f"+wandb_api_key={VALUE}"],
    ["-m", f"+db_password={VALUE}", "optim=adamw,muon"],
])
def test_a_launch_with_a_credential_by_name_is_refused_before_anything(env: dict, tmp_path: Path,
                                                                       args: list) -> None:
    env = {k: v for k, v in env.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_API_KEY")}
    argv = [args[0], *FAST, *args[1:]] if args[0] == "-m" else [*FAST, *args]
    proc = run_train(argv, env, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and REDACTED in out and "credential" in out, out
    assert VALUE not in out and "Traceback" not in out
    assert not (tmp_path / "runs").exists()  # refused before any run or sweep directory
