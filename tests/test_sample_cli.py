"""The sample CLI (:mod:`ldns_fast.sample`) refusing a missing run and settings that do not apply."""
from __future__ import annotations

from pathlib import Path

import pytest

from ldns_fast.sample import main as sample_main


def test_sample_cli_reports_a_missing_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="diffusion.pt does not exist"):
        sample_main([str(tmp_path), "--n", "2"])


def test_sample_cli_rejects_eta_for_fixed_noise_samplers(tmp_path: Path, capsys) -> None:
    for name in ("ddpm", "sde-dpm++"):
        with pytest.raises(SystemExit):
            sample_main([str(tmp_path), "--sampler", name, "--eta", "0.5"])
        assert "--eta applies to ddim and dpm++" in capsys.readouterr().err
