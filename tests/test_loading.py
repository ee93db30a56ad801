"""The one-time conversion of the embedded model: two processes converting at once both succeed."""
from __future__ import annotations

import pytest

from kedit.models.loading import _publish


def _conversion(folder, text):
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


def test_publish_moves_the_conversion_into_place(tmp_path):
    tmp = _conversion(tmp_path / "model.tmp1", "ours")
    _publish(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").read_text() == "ours" and not tmp.exists()


def test_a_conversion_that_lost_the_race_is_dropped_and_the_winner_kept(tmp_path):
    winner = _conversion(tmp_path / "model", "theirs")
    tmp = _conversion(tmp_path / "model.tmp2", "ours")
    _publish(tmp, winner)  # os.rename onto a non-empty folder fails; the winner's copy stands
    assert (winner / "config.json").read_text() == "theirs" and not tmp.exists()


def test_a_failed_move_with_nothing_in_place_is_raised(tmp_path):
    with pytest.raises(OSError):
        _publish(tmp_path / "missing.tmp3", tmp_path / "model")
