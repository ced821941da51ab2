"""The verbs that start work from a config check every key (add-on sections and the family
included) before they write anything: a misspelt key costs no data generation and no run folder."""

from __future__ import annotations

from tagseg.cli import main


def test_train_refuses_a_misspelt_addon_key_before_making_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "demo", f"data.root={tmp_path / 'data'}", "addons.ppc.wieght=1",
                 "--out", str(run)]) == 2
    assert "addons.ppc.wieght: unknown key" in capsys.readouterr().err
    assert not run.exists()


def test_train_refuses_an_addon_the_family_cannot_serve_before_making_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "seam_voc", f"data.root={tmp_path / 'voc'}", "addons.rca.enabled=true",
                 "--out", str(run)]) == 2
    assert "addons.rca" in capsys.readouterr().err
    assert not run.exists()


def test_demo_refuses_a_misspelt_addon_key_before_generating_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "addons.ppc.wieght=1"]) == 2
    assert "addons.ppc.wieght: unknown key" in capsys.readouterr().err
    assert not (out / "data").exists()
