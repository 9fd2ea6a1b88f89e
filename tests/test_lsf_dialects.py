"""The bsub options of each LSF dialect (jobs.backends.lsf): the common form where there is
one, and never an option the scheduler lacks (OpenLava misreads `-wa USR2` as `-w a`, `-outdir`
as `-o utdir`). Memory in the site's unit (LSF_UNIT_FOR_LIMITS), the dialect from lsid."""

from __future__ import annotations

import pytest

from jobs.backends import lsf
from jobs.backends.lsf import Site, bsub_options, conf_unit, dialect_of, site
from jobs.resources import LsfOptions, Resources
from quantlib.errors import UserError

LSF10, OPENLAVA = Site("lsf10", "MB", "test"), Site("openlava", "MB", "test")


def options(res: Resources, st: Site, count: int | None = 24, outdir: str | None = None):
    return bsub_options(res, st, "inq", count, "/o/%J_%I.out", "/o/%J_%I.err", 4, outdir)


def test_the_common_form_on_both():
    res = Resources(cpus=2, mem_mb=8164, time_minutes=240, queue="short")
    for st in (LSF10, OPENLAVA):
        lines = options(res, st)
        assert lines[:3] == ['-J "inq[1-24]%4"', "-o /o/%J_%I.out", "-e /o/%J_%I.err"]
        assert sum(1 for x in lines if x.startswith("-R ")) == 1  # OpenLava refuses two
        assert '-R "rusage[mem=4082] span[hosts=1]"' not in lines  # per host by default
        assert '-R "rusage[mem=8164] span[hosts=1]"' in lines and "-M 8164" in lines
        assert "-W 4:00" in lines and "-n 2" in lines and "-q short" in lines
        assert not any("MB" in x for x in lines)  # OpenLava refuses units in rusage


def test_what_only_lsf10_has():
    res = Resources(gpus=1, lsf=LsfOptions(warn_minutes=5))
    ten = options(res, LSF10, outdir="/o/%J")
    assert "-wa USR2" in ten and "-wt 5" in ten and "-outdir /o/%J" in ten
    assert '-gpu "num=1:mode=exclusive_process"' in ten
    with pytest.raises(UserError, match="no -gpu"):
        options(res, OPENLAVA)
    ola = options(Resources(lsf=LsfOptions(warn_minutes=5)), OPENLAVA, outdir="/o/%J")
    assert not any(x.split()[0] in ("-wa", "-wt", "-outdir", "-gpu") for x in ola)
    site_gpu = options(Resources(gpus=2, lsf=LsfOptions(gpu_syntax="rusage")), OPENLAVA)
    assert '-R "rusage[mem=4096,ngpus_excl_p=2] span[hosts=1]"' in site_gpu


def test_extra_options_openlava_lacks_are_refused():
    assert "-x" in options(Resources(lsf=LsfOptions(extra=["-x"])), OPENLAVA)
    for bad in ("-outdir /x", "-cwd /x", "-oo out", "-Zs", "-app big"):
        with pytest.raises(UserError, match="OpenLava / volclava has no"):
            options(Resources(lsf=LsfOptions(extra=[bad])), OPENLAVA)
        assert bad in options(Resources(lsf=LsfOptions(extra=[bad])), LSF10)


def test_memory_follows_the_sites_unit(tmp_path, monkeypatch):
    (tmp_path / "lsf.conf").write_text("# site\nLSF_UNIT_FOR_LIMITS=KB\n")
    monkeypatch.setenv("LSF_ENVDIR", str(tmp_path))
    assert conf_unit() == "KB"
    res = Resources(mem_mb=1000, lsf=LsfOptions(dialect="lsf10"))
    st = site(res)
    assert st.mem_unit == "KB" and "LSF_UNIT_FOR_LIMITS" in st.source
    assert "-M 1024000" in options(res, st)
    res.lsf.mem_unit = "GB"  # the spec overrides; rounded up, never less than asked
    st = site(res)
    assert "-M 1" in options(res, st) and "(resources.lsf.mem_unit)" in st.source
    (tmp_path / "lsf.conf").write_text("LSF_UNIT_FOR_LIMITS=MB\n")
    res.lsf.mem_unit = None
    assert site(res).mem_unit == "MB"
    (tmp_path / "lsf.conf").unlink()
    assert conf_unit() is None and site(res).mem_unit == "MB"  # else MB


def test_the_dialect_from_lsid(monkeypatch):
    assert dialect_of("IBM Spectrum LSF Standard 10.1.0.13, Nov 16 2022") == "lsf10"
    assert dialect_of("volclava project 2.2, Dec  1 2026") == "openlava"
    assert dialect_of("openlava project 2.2, Nov 6 2011") == "openlava"
    assert dialect_of("") is None and dialect_of("Segmentation fault") is None
    monkeypatch.setattr(lsf, "_lsid_cache", {"line": "volclava project 2.2, Dec  1 2026"})
    st = site(Resources())
    assert st.dialect == "openlava" and "lsid" in st.source
    monkeypatch.setattr(lsf, "_lsid_cache", {"line": None})
    st = site(Resources())
    assert st.dialect == "lsf10" and "no answer from lsid" in st.source
    assert site(Resources(lsf=LsfOptions(dialect="openlava"))).dialect == "openlava"
