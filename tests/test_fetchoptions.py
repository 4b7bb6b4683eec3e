"""The options of harvest and the atlas: validated once, when made (so a notebook, the command line
and a derived copy read the same line), and the command line built from the dataclass fields."""

from __future__ import annotations

import dataclasses

import pytest

from builder.acquire.options import AtlasOptions, HarvestOptions
from builder.cli import build_parser
from builder.core.errors import UsageError


def test_a_bad_value_is_refused_when_the_options_are_made_and_when_a_copy_is_derived():
    good = HarvestOptions(zoom=6, max_tiles=10)
    with pytest.raises(UsageError, match=r"--max-tiles must be an integer >= 1 \(or left out for no limit\), got 0"):
        dataclasses.replace(good, max_tiles=0)
    with pytest.raises(UsageError, match="--zoom 23 is out of range"):
        HarvestOptions(zoom=23)
    with pytest.raises(UsageError, match="give --phase 2 or --plan p.json, not both"):
        HarvestOptions(phase="2", plan="p.json")
    with pytest.raises(UsageError, match="--target empty draws its tiles from the atlas"):
        HarvestOptions(target="empty", phase="1")
    with pytest.raises(UsageError, match="--target 'full': use one of empty, underfilled"):
        HarvestOptions(target="full")


def test_the_atlas_checks_its_overview_zoom_and_takes_one_area_at_most():
    assert AtlasOptions(zoom=9).overview_zoom == 1 and AtlasOptions(zoom=5).overview_zoom == 0
    assert AtlasOptions(zoom=9, atlas_zoom=3).overview_zoom == 3
    with pytest.raises(UsageError, match="--atlas-zoom 0 must be an integer from 1"):
        AtlasOptions(zoom=9, atlas_zoom=0)
    with pytest.raises(UsageError, match="give one area at most, not --phase and --bbox"):
        AtlasOptions(phase="1", bbox=(0.0, 0.0, 1.0, 1.0))


@pytest.mark.parametrize(("command", "options"), [("harvest", HarvestOptions), ("atlas", AtlasOptions)])
def test_the_command_line_is_the_dataclass_fields(command, options):
    """Every field meant for the command line is an option of the command, with the field's
    default, and parsing the defaults gives back the dataclass's defaults."""
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    parser = sub.choices[command]
    by_dest = {a.dest: a for a in parser._actions}
    on_cli = [f for f in dataclasses.fields(options) if f.metadata["cli"]]
    assert on_cli and {f.name for f in on_cli} <= set(by_dest)
    for f in on_cli:
        assert by_dest[f.name].option_strings == [f.metadata["flag"]] and by_dest[f.name].default == f.default
    assert set(by_dest) - {f.name for f in on_cli} <= {"help", "library", "json", "calibrate"}
    args = parser.parse_args(["--zoom", "9"])
    made = options(**{f.name: getattr(args, f.name) for f in on_cli})
    assert made == options(zoom=9)
