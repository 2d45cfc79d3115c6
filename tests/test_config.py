"""Tests of the config package: sources, precedence, validation, formatting."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from config import (
    DEFAULT_PROVIDERS,
    DEFAULT_UID_ROOT,
    CallingAE,
    Destination,
    RetryPolicy,
    SelectionRules,
    Settings,
    SettingsError,
    env_variable,
    format_settings,
    known_keys,
    load_settings,
)
from config.cli import register, settings_from_args
from config.sections import DEFAULT_OBJECTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "docs" / "deepsc-node.example.toml"


def _write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(**kwargs: object) -> SettingsError:
    kwargs.setdefault("environ", {})
    with pytest.raises(SettingsError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value


class TestDefaults:
    def test_defaults_are_complete_and_valid(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        settings = load_settings(environ={})
        assert settings == Settings()
        assert settings.ae_title == "DEEPSC"
        assert settings.port == 11112
        assert settings.data_dir == tmp_path / "deepsc-data"
        assert (
            settings.database_url == f"sqlite:///{tmp_path / 'deepsc-data' / 'deepsc-node.sqlite3'}"
        )
        assert settings.model_dir.parts[-2:] == ("inference", "bundled_model")
        assert settings.model_dir.parent == REPO_ROOT / "inference"
        assert (
            settings.providers
            == DEFAULT_PROVIDERS
            == ("CUDAExecutionProvider", "CPUExecutionProvider")
        )
        assert settings.uid_root == DEFAULT_UID_ROOT
        assert settings.export_retry.max_attempts is None
        assert settings.destinations == ()
        assert settings.allowed_calling_aes == ()
        assert settings.selection.modalities == ("CT",)
        assert "LOCALIZER" in settings.selection.image_type_exclude
        assert settings.selection.max_slice_thickness >= 8.0  # the shared 8 mm chest CT
        assert settings.instances_dir == settings.data_dir / "instances"
        assert settings.results_dir == settings.data_dir / "results"
        data = settings.to_dict()
        flat = {f"{k}.{sub}" for k, v in data.items() if isinstance(v, dict) for sub in v}
        flat |= {k for k, v in data.items() if not isinstance(v, dict)}
        assert flat == set(known_keys())

    def test_settings_are_frozen(self) -> None:
        settings = Settings()
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.port = 1  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.selection.min_slices = 1  # type: ignore[misc]

    def test_direct_construction_is_validated(self) -> None:
        with pytest.raises(ValueError, match='"port"'):
            Settings(port=0)
        with pytest.raises(ValueError, match='"ae_title"'):
            Destination("pacs", "x" * 17, "127.0.0.1", 104)
        with pytest.raises(ValueError, match='"max_backoff"'):
            RetryPolicy(initial_backoff=10, max_backoff=5)
        with pytest.raises(ValueError, match='"min_slices"'):
            SelectionRules(min_slices=0)


class TestPrecedence:
    def test_file_then_env_then_cli(self, tmp_path: Path) -> None:
        config_file = _write(
            tmp_path,
            'port = 1001\nae_title = "FROMFILE"\nworkers = 3\n'
            "[selection]\nmin_slices = 5\nmax_slice_thickness = 3.0\n",
        )
        environ = {
            "DEEPSC_PORT": "2002",
            "DEEPSC_AE_TITLE": "FROMENV",
            "DEEPSC_SELECTION__MIN_SLICES": "7",
        }
        overrides = {"port": 3003, "selection.max_slice_thickness": "4.5"}

        only_file = load_settings(config_file, environ={})
        assert (only_file.port, only_file.ae_title, only_file.workers) == (1001, "FROMFILE", 3)

        file_env = load_settings(config_file, environ=environ)
        assert (file_env.port, file_env.ae_title, file_env.workers) == (2002, "FROMENV", 3)
        assert file_env.selection.min_slices == 7  # env beats file, key by key
        assert file_env.selection.max_slice_thickness == 3.0  # file value kept

        everything = load_settings(config_file, environ=environ, overrides=overrides)
        assert (everything.port, everything.ae_title, everything.workers) == (3003, "FROMENV", 3)
        assert everything.selection.min_slices == 7
        assert everything.selection.max_slice_thickness == 4.5

    def test_nested_overrides_and_none_means_unset(self) -> None:
        settings = load_settings(
            environ={"DEEPSC_WORKERS": "4"},
            overrides={"workers": None, "export_retry": {"max_attempts": 3}},
        )
        assert settings.workers == 4
        assert settings.export_retry.max_attempts == 3

    def test_config_file_from_environment(self, tmp_path: Path) -> None:
        config_file = _write(tmp_path, "port = 4444\n")
        assert load_settings(environ={"DEEPSC_CONFIG": str(config_file)}).port == 4444

    def test_relative_paths(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        etc = tmp_path / "etc"
        etc.mkdir()
        config_file = _write(etc, 'data_dir = "../var/data"\nmodel_dir = "models/m1"\n')
        monkeypatch.chdir(tmp_path)
        from_file = load_settings(config_file, environ={})
        assert from_file.data_dir == tmp_path / "var" / "data"
        assert from_file.model_dir == etc / "models" / "m1"
        assert (
            from_file.database_url
            == f"sqlite:///{tmp_path / 'var' / 'data' / 'deepsc-node.sqlite3'}"
        )
        from_env = load_settings(config_file, environ={"DEEPSC_DATA_DIR": "here"})
        assert from_env.data_dir == tmp_path / "here"

    def test_lists_are_replaced_not_merged(self, tmp_path: Path) -> None:
        config_file = _write(
            tmp_path,
            '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "10.0.0.1"\nport = 104\n'
            '[[destinations]]\nname = "b"\nae_title = "B"\nhost = "pacs.example.org"\nport = 105\n'
            'objects = ["seg"]\n',
        )
        from_file = load_settings(config_file, environ={})
        assert from_file.destinations == (
            Destination("a", "A", "10.0.0.1", 104),
            Destination("b", "B", "pacs.example.org", 105, ("seg",)),
        )
        from_env = load_settings(config_file, environ={"DEEPSC_DESTINATIONS": "C=CC@[::1]:11112"})
        assert from_env.destinations == (Destination("C", "CC", "::1", 11112),)


class TestEnvironment:
    def test_all_documented_variables(self, tmp_path: Path) -> None:
        environ = {
            "DEEPSC_AE_TITLE": " NODE1 ",
            "DEEPSC_PORT": "104",
            "DEEPSC_BIND_ADDRESS": "127.0.0.1",
            "DEEPSC_DATA_DIR": str(tmp_path / "data"),
            "DEEPSC_DATABASE_URL": "postgresql+psycopg2://deepsc:pw@db/deepsc",
            "DEEPSC_MODEL_DIR": str(tmp_path / "model"),
            "DEEPSC_WORKERS": "2",
            "DEEPSC_LOG_LEVEL": "debug",
            "DEEPSC_QUIET_TIME": "2.5",
            "DEEPSC_DESTINATIONS": "PACS=ORTHANC@127.0.0.1:4242,ARCH=ARCHIVE@archive.local:104",
            "DEEPSC_ALLOWED_CALLING_AES": "ORTHANC,CT1@10.1.2.3",
            "DEEPSC_PROVIDERS": "CPUExecutionProvider",
            "DEEPSC_UID_ROOT": "1.2.3.4",
            "DEEPSC_SELECTION__MIN_SLICES": "10",
            "DEEPSC_SELECTION__IMAGE_TYPE_EXCLUDE": "localizer,derived",
            "DEEPSC_SELECTION__SERIES_DESCRIPTION_INCLUDE": '["thorax|chest", "a,b"]',
            "DEEPSC_EXPORT_RETRY__MAX_ATTEMPTS": "forever",
            "DEEPSC_TIMEOUTS__DIMSE": "90",
            "DEEPSC_RESULT_SERIES_NUMBER_BASE": "7000",
            "DEEPSC_SHARED_DATA": "/not/a/setting",  # test-suite variable, tolerated
            "PATH": "/usr/bin",
        }
        settings = load_settings(environ=environ)
        assert settings.ae_title == "NODE1"
        assert (settings.port, settings.bind_address, settings.workers) == (104, "127.0.0.1", 2)
        assert settings.database_url == "postgresql+psycopg2://deepsc:pw@db/deepsc"
        assert settings.model_dir == tmp_path / "model"
        assert settings.log_level == "DEBUG"
        assert settings.quiet_time == 2.5
        assert [d.name for d in settings.destinations] == ["PACS", "ARCH"]
        assert settings.destinations[1].host == "archive.local"
        assert settings.allowed_calling_aes == (CallingAE("ORTHANC"), CallingAE("CT1", "10.1.2.3"))
        assert settings.providers == ("CPUExecutionProvider",)
        assert settings.uid_root == "1.2.3.4."
        assert settings.selection.min_slices == 10
        assert settings.selection.image_type_exclude == ("LOCALIZER", "DERIVED")
        assert settings.selection.series_description_include == ("thorax|chest", "a,b")
        assert settings.export_retry.max_attempts is None
        assert settings.timeouts.dimse == 90.0
        assert settings.result_series_number_base == 7000
        assert {env_variable(k) for k in known_keys()} >= {
            v for v in environ if v.startswith("DEEPSC_")
        } - {"DEEPSC_SHARED_DATA"}

    @pytest.mark.parametrize("name", ["DEEPSC_PROT", "DEEPSC_SELECTION__MIN_SLICE", "DEEPSC_FOO"])
    def test_unknown_variable_refused(self, name: str) -> None:
        error = _error(environ={name: "1"})
        assert error.keys == (name,)
        assert name in str(error)
        assert "unknown" in str(error)

    def test_typo_gets_a_suggestion(self) -> None:
        assert 'did you mean "DEEPSC_PORT"' in str(_error(environ={"DEEPSC_PROT": "1"}))


#: (environment variable, bad value, key named in the error)
BAD_VALUES = [
    ("DEEPSC_PORT", "abc", "port"),
    ("DEEPSC_PORT", "0", "port"),
    ("DEEPSC_PORT", "65536", "port"),
    ("DEEPSC_AE_TITLE", "A" * 17, "ae_title"),
    ("DEEPSC_AE_TITLE", "   ", "ae_title"),
    ("DEEPSC_AE_TITLE", "BAD\\AE", "ae_title"),
    ("DEEPSC_AE_TITLE", "BAD\x1bAE", "ae_title"),
    ("DEEPSC_BIND_ADDRESS", "not a host!", "bind_address"),
    ("DEEPSC_DATABASE_URL", "not a url", "database_url"),
    ("DEEPSC_WORKERS", "0", "workers"),
    ("DEEPSC_WORKERS", "1.5", "workers"),
    ("DEEPSC_LOG_LEVEL", "LOUD", "log_level"),
    ("DEEPSC_QUIET_TIME", "-1", "quiet_time"),
    ("DEEPSC_QUIET_TIME", "nan", "quiet_time"),
    ("DEEPSC_DESTINATIONS", "PACS@host:104", "destinations"),
    ("DEEPSC_DESTINATIONS", "P=AE@host:99999", "destinations"),
    ("DEEPSC_DESTINATIONS", "P=AE@host:104,P=AE2@host:105", "destinations"),
    ("DEEPSC_ALLOWED_CALLING_AES", "GOOD,WAY_TOO_LONG_AE_TITLE", "allowed_calling_aes"),
    ("DEEPSC_PROVIDERS", "", "providers"),
    ("DEEPSC_PROVIDERS", "CUDA", "providers"),
    ("DEEPSC_PROVIDERS", "CPUExecutionProvider,CUDAExecutionProvider", "providers"),
    ("DEEPSC_UID_ROOT", "1.02.3", "uid_root"),
    ("DEEPSC_UID_ROOT", "1.2.abc", "uid_root"),
    ("DEEPSC_UID_ROOT", "1." * 30, "uid_root"),
    ("DEEPSC_SELECTION__MIN_SLICES", "0", "selection.min_slices"),
    ("DEEPSC_SELECTION__MAX_SLICE_THICKNESS", "0", "selection.max_slice_thickness"),
    ("DEEPSC_SELECTION__ORIENTATION_TOLERANCE", "95", "selection.orientation_tolerance"),
    ("DEEPSC_SELECTION__MODALITIES", "", "selection.modalities"),
    ("DEEPSC_SELECTION__IMAGE_TYPE_EXCLUDE", "local-izer", "selection.image_type_exclude"),
    (
        "DEEPSC_SELECTION__SERIES_DESCRIPTION_EXCLUDE",
        "(unclosed",
        "selection.series_description_exclude",
    ),
    ("DEEPSC_EXPORT_RETRY__MAX_ATTEMPTS", "0", "export_retry.max_attempts"),
    ("DEEPSC_EXPORT_RETRY__MAX_BACKOFF", "1", "export_retry.max_backoff"),
    ("DEEPSC_TIMEOUTS__ACSE", "zero", "timeouts.acse"),
    ("DEEPSC_RESULT_SERIES_NUMBER_BASE", "-5", "result_series_number_base"),
]


class TestValidation:
    @pytest.mark.parametrize(("variable", "value", "key"), BAD_VALUES, ids=lambda v: str(v)[:20])
    def test_error_names_key_and_source(self, variable: str, value: str, key: str) -> None:
        error = _error(environ={variable: value})
        assert error.keys == (key,)
        assert f'settings key "{key}" (from environment {variable}):' in str(error)

    def test_example_message_format(self) -> None:
        assert str(_error(environ={"DEEPSC_PORT": "abc"})) == (
            'settings key "port" (from environment DEEPSC_PORT): '
            'should be an integer 1-65535, got "abc"'
        )

    def test_file_errors_name_key_and_file(self, tmp_path: Path) -> None:
        config_file = _write(
            tmp_path, 'port = "abc"\nprot = 1\n[selection]\nmin_slice = 3\n[timeouts]\ndimse = -1\n'
        )
        error = _error(config_file=config_file)
        assert set(error.keys) == {"port", "prot", "selection.min_slice", "timeouts.dimse"}
        text = str(error)
        assert f'settings key "port" (from file {config_file})' in text
        assert 'unknown key (did you mean "port"?)' in text
        assert 'settings key "selection.min_slice"' in text

    def test_file_problems(self, tmp_path: Path) -> None:
        missing = _error(config_file=tmp_path / "missing.toml")
        assert missing.keys == ("config_file",) and "not found" in str(missing)
        broken = _error(config_file=_write(tmp_path, "port = = 1\n"))
        assert broken.keys == ("config_file",) and "TOML" in str(broken)
        not_table = _error(config_file=_write(tmp_path, "selection = 3\n"))
        assert not_table.keys == ("selection",)

    def test_command_line_errors(self) -> None:
        error = _error(overrides={"port": "x", "selection.min_slices": -1, "bogus": 1})
        assert set(error.keys) == {"port", "selection.min_slices", "bogus"}
        assert 'settings key "port" (from command line)' in str(error)

    def test_all_problems_reported_at_once(self) -> None:
        error = _error(environ={"DEEPSC_PORT": "x", "DEEPSC_WORKERS": "0", "DEEPSC_NOPE": "1"})
        assert set(error.keys) == {"port", "workers", "DEEPSC_NOPE"}
        assert str(error).startswith("3 settings problems:")

    @pytest.mark.parametrize("title", ["A", "ORTHANC", "  PADDED  ", "X" * 16, "a-b_c.d e"])
    def test_valid_ae_titles(self, title: str) -> None:
        assert load_settings(environ={"DEEPSC_AE_TITLE": title}).ae_title == title.strip()

    def test_destination_table_errors(self, tmp_path: Path) -> None:
        config_file = _write(
            tmp_path,
            '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 1\n'
            'objects = ["pdf"]\n',
        )
        error = _error(config_file=config_file)
        assert error.keys == ("destinations",)
        assert "seg, sr, outline, sc, gsps" in str(error)

    def test_destination_objects_default_and_choice(self, tmp_path: Path) -> None:
        config_file = _write(
            tmp_path,
            '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 1\n'
            '[[destinations]]\nname = "b"\nae_title = "B"\nhost = "h"\nport = 2\n'
            'objects = ["SEG", "gsps"]\n',
        )
        first, second = load_settings(config_file, environ={}).destinations
        assert first.objects == DEFAULT_OBJECTS == ("seg", "sr", "outline", "sc")
        assert second.objects == ("seg", "gsps")


class TestFormatting:
    def test_round_trip(self, tmp_path: Path) -> None:
        settings = load_settings(
            environ={
                "DEEPSC_DESTINATIONS": "PACS=ORTHANC@127.0.0.1:4242",
                "DEEPSC_ALLOWED_CALLING_AES": "ORTHANC@127.0.0.1,CT1",
                "DEEPSC_EXPORT_RETRY__MAX_ATTEMPTS": "4",
                "DEEPSC_DATA_DIR": str(tmp_path),
            }
        )
        text = format_settings(settings)
        assert "research use only" in text.lower()
        config_file = _write(tmp_path, text, "effective.toml")
        assert load_settings(config_file, environ={}) == settings
        assert load_settings(overrides=settings.to_dict(), environ={}) == settings

    def test_defaults_round_trip(self) -> None:
        settings = Settings()
        document = tomllib.loads(format_settings(settings))
        assert document["export_retry"]["max_attempts"] == "forever"
        assert load_settings(overrides=document, environ={}) == settings

    def test_password_hidden(self) -> None:
        settings = load_settings(environ={"DEEPSC_DATABASE_URL": "postgresql://deepsc:s3cret@db/x"})
        assert "s3cret" not in format_settings(settings)
        assert "s3cret" in format_settings(settings, hide_secrets=False)
        assert settings.to_dict(hide_secrets=True)["database_url"] == "postgresql://deepsc:***@db/x"

    def test_type_checked(self) -> None:
        with pytest.raises(TypeError, match='"settings"'):
            format_settings({"port": 1})  # type: ignore[arg-type]


class TestExampleFile:
    def test_example_loads(self) -> None:
        settings = load_settings(EXAMPLE, environ={})
        assert settings.destinations == (Destination("pacs", "ORTHANC", "127.0.0.1", 4242),)
        defaults = Settings()
        assert dataclasses.replace(settings, destinations=()) == defaults

    def test_example_documents_every_key(self) -> None:
        text = EXAMPLE.read_text(encoding="utf-8")
        for key in known_keys():
            name = key.rpartition(".")[2]
            documented = (f"\n{name} = ", f"\n# {name} = ", f"\n[[{name}]]")
            assert any(form in text for form in documented), key
            assert env_variable(key) in text, key


class TestHelpers:
    def test_calling_ae_allow_list(self) -> None:
        assert Settings().is_calling_ae_allowed("ANYONE")
        settings = load_settings(environ={"DEEPSC_ALLOWED_CALLING_AES": "ORTHANC,CT1@10.0.0.7"})
        assert settings.is_calling_ae_allowed("ORTHANC", "192.168.1.1")
        assert settings.is_calling_ae_allowed("CT1 ", "10.0.0.7")
        assert not settings.is_calling_ae_allowed("CT1", "10.0.0.8")
        assert not settings.is_calling_ae_allowed("OTHER")

    def test_destination_lookup(self) -> None:
        settings = load_settings(environ={"DEEPSC_DESTINATIONS": "PACS=ORTHANC@127.0.0.1:4242"})
        assert settings.destination("PACS").port == 4242
        with pytest.raises(KeyError):
            settings.destination("nope")

    def test_retry_policy(self) -> None:
        policy = RetryPolicy(max_attempts=3, initial_backoff=5, max_backoff=600)
        assert [policy.delay(n) for n in (1, 2, 3, 8, 1000)] == [5, 10, 20, 600, 600]
        assert not policy.gives_up(2) and policy.gives_up(3)
        assert not RetryPolicy().gives_up(10**6)


class TestCommand:
    def _parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="deepsc-node")
        register(parser.add_subparsers())
        return parser

    def test_config_check_prints_effective_settings(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in [n for n in __import__("os").environ if n.startswith("DEEPSC_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("DEEPSC_WORKERS", "2")
        config_file = _write(tmp_path, "port = 1234\n")
        args = self._parser().parse_args(
            [
                "config",
                "--check",
                "--config",
                str(config_file),
                "--ae-title",
                "CLI",
                "--destination",
                "P=AE@127.0.0.1:104",
                "--set",
                "selection.min_slices=9",
            ]
        )
        assert args.func(args) == 0
        document = tomllib.loads(capsys.readouterr().out)
        assert (document["port"], document["ae_title"], document["workers"]) == (1234, "CLI", 2)
        assert document["selection"]["min_slices"] == 9
        assert document["destinations"][0]["name"] == "P"
        assert settings_from_args(args, environ={}).workers == 1

    def test_config_check_reports_problems(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEEPSC_PORT", "abc")
        args = self._parser().parse_args(["config", "--check", "--workers", "0"])
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert 'settings key "port" (from environment DEEPSC_PORT)' in err
        assert 'settings key "workers" (from command line)' in err
