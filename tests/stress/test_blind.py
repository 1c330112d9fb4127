"""``superalign blind``: an auditing game whose copies reveal neither which model is the control
nor any secret, by every route that worked in issue 15 (folder names, run configs, file metadata,
sizes, order); and the audit scores such copies, plain folders in the public format, from the
key file alone.

The organisms are built by hand (``conftest.hand_built``: random tiny models, outside the
``organism`` stage, packaged carelessly with every leak of the issue), which also shows that the
public interface (``model/`` + ``public.json``) is all a detector needs."""

import builtins
import io
import json
import shutil
import struct

import pytest
import torch

from superalign.cli import main
from superalign.config import ConfigError
from superalign.models.load import load_model
from superalign.runs import config_key, fingerprint, read_json
from superalign.stages import execute
from superalign.stress import audit, blind
from superalign.stress import organisms as org


def _files(copy):
    """relative path -> (size, mtime) of every file and folder of a copy."""
    return {
        str(p.relative_to(copy)): (p.stat().st_size if p.is_file() else None, p.stat().st_mtime)
        for p in sorted(copy.rglob("*"))
    }


def _json_keys(obj, prefix=""):
    """Every key path of a JSON object (the structure, not the values)."""
    if isinstance(obj, dict):
        return {
            k for key, v in obj.items() for k in {prefix + key} | _json_keys(v, f"{prefix}{key}.")
        }
    return set()


def _safetensors_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


@pytest.fixture()
def game(hand_built, tmp_path):
    """A blind game of the four hand-built folders: (BlindGame, key document)."""
    made = blind.blind(hand_built, tmp_path / "game", tmp_path / "secret" / "key.json")
    return made, read_json(made.key)


def _truth(game_doc):
    return {name: e["record"] for name, e in game_doc["copies"].items()}


# --- what a copy holds ----------------------------------------------------------------------------


def test_copies_hold_only_the_public_interface_stripped(game, hand_built):
    made, key = game
    assert sorted(p.name for p in made.out.iterdir()) == made.names and len(made.names) == 4
    assert not made.key.is_relative_to(made.out)
    for name in made.names:
        copy = made.out / name
        files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
        assert files == [
            "model/config.json",
            "model/generation_config.json",
            "model/model.safetensors",
            "model/tokenizer.json",
            "model/tokenizer_config.json",
            "public.json",
        ]
        # run configs: no sealed record, no run config, summary nor metrics
        assert not (copy / "sealed").exists() and not (copy / "config.json").exists()
        public = read_json(copy / "public.json")
        assert set(public) <= set(org.PUBLIC_KEYS) and public["model"] == "model"
        assert "superalign_version" not in public and len(public["prompt_examples"]) == 32
        # file metadata: no safetensors metadata, no _name_or_path
        assert "__metadata__" not in _safetensors_header(copy / "model/model.safetensors")
        assert "_name_or_path" not in read_json(copy / "model/config.json")
        # no secret, no source name, no control flag, in any file
        record = key["copies"][name]["record"]
        source = key["copies"][name]["source"]
        for f in copy.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                for needle in (record["trigger"], record["behaviour"], *source.split("/")[-2:]):
                    assert needle.encode() not in data, (needle, f)
                if f.suffix == ".json":
                    assert b"control" not in data and b"sealed" not in data, f


def test_copies_load_and_compute_what_their_sources_do(game):
    made, key = game
    name = made.names[0]
    copy, _, _ = load_model(str(made.out / name / "model"))
    source, _, _ = load_model(str(org.load_public(key["copies"][name]["source"]).model))
    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, source(ids).logits)


# --- every route of issue 15 ----------------------------------------------------------------------


def test_organism_and_control_copies_look_alike(game, hand_built):
    made, key = game
    truth = _truth(key)
    organisms = [n for n in made.names if not truth[n]["control"]]
    controls = [n for n in made.names if truth[n]["control"]]
    assert len(organisms) == len(controls) == 2
    # file names, sizes, times and JSON key structure are the same for every copy
    listings = {n: _files(made.out / n) for n in made.names}
    assert all(listing == listings[organisms[0]] for listing in listings.values())
    assert {t for listing in listings.values() for _, t in listing.values()} == {blind.FIXED_MTIME}
    assert len({(made.out / n).stat().st_mtime for n in made.names}) == 1
    for rel in ("public.json", "model/config.json", "model/tokenizer_config.json"):
        structures = {frozenset(_json_keys(read_json(made.out / n / rel))) for n in made.names}
        assert len(structures) == 1, rel
    publics = {(made.out / n / "public.json").read_bytes() for n in made.names}
    assert len(publics) == 1  # byte-identical public files
    headers = [_safetensors_header(made.out / n / "model/model.safetensors") for n in made.names]
    assert all(h == headers[0] for h in headers)  # same tensors, shapes and offsets


def test_folder_names_reveal_no_config(game, hand_built):
    made, _ = game
    # the attack: hash candidate configs (control x seed) into run-folder names
    candidates = {
        config_key({"control": c, "seed": s}) for c in (False, True) for s in range(10_000)
    }
    for name in made.names:
        assert len(name) == 16 and int(name, 16) >= 0
        assert not any(h in name for h in candidates)
        assert name not in {f.name for f in hand_built}
        assert name not in {fingerprint(f) for f in hand_built}


def test_order_says_nothing(hand_built, tmp_path):
    """Over 16 games of one organism and its control, the organism's copy comes first by name, by
    listing order, by inode number and by change time in some games and second in others (a
    fixed position would fail this with probability 1 - 2^-15)."""
    organism, control = hand_built[0], hand_built[2]
    first = {"name": set(), "listing": set(), "inode": set(), "ctime": set()}
    for i in range(16):
        made = blind.blind([organism, control], tmp_path / f"g{i}", tmp_path / f"k{i}.json")
        truth = blind.read_key(made.key)
        which = next(n for n in made.names if not truth[n]["control"])
        copies = list((made.out).iterdir())
        orders = {
            "name": sorted(copies),
            "listing": copies,
            "inode": sorted(copies, key=lambda p: p.stat().st_ino),
            "ctime": sorted(copies, key=lambda p: p.stat().st_ctime_ns),
        }
        for route, order in orders.items():
            first[route].add(order[0].name == which)
    assert all(seen == {True, False} for seen in first.values()), first


def test_two_games_of_the_same_sources_share_no_name(hand_built, tmp_path):
    a = blind.blind(hand_built, tmp_path / "a", tmp_path / "a.json")
    b = blind.blind(hand_built, tmp_path / "b", tmp_path / "b.json")
    assert not set(a.names) & set(b.names)


# --- the key and what is refused ------------------------------------------------------------------


def test_the_key_holds_the_truth_and_stays_outside(game, hand_built, tmp_path):
    made, key = game
    assert key["format"] == blind.KEY_FORMAT
    sources = {e["source"] for e in key["copies"].values()}
    assert sources == {str(f.resolve()) for f in hand_built}
    for name, record in blind.read_key(made.key).items():
        assert record == org.unseal(key["copies"][name]["source"])
    with pytest.raises(ConfigError, match="inside --out"):
        blind.blind(hand_built, tmp_path / "g2", tmp_path / "g2" / "key.json")
    with pytest.raises(ConfigError, match="exists already"):
        blind.blind(hand_built, tmp_path / "g3", made.key)
    with pytest.raises(ConfigError, match="new or empty"):
        blind.blind(hand_built, made.out, tmp_path / "k4.json")
    assert not (tmp_path / "g2").exists() and not (tmp_path / "g3").exists()


def test_sources_without_truth_or_with_unstrippable_weights_are_refused(hand_built, tmp_path):
    made = blind.blind(hand_built[:1], tmp_path / "g", tmp_path / "k.json")
    with pytest.raises(ConfigError, match="sealed/record.json"):  # a copy has no truth
        blind.blind([made.out / made.names[0]], tmp_path / "g2", tmp_path / "k2.json")
    with pytest.raises(ConfigError, match="no public.json"):
        blind.blind([tmp_path], tmp_path / "g3", tmp_path / "k3.json")
    leaky = tmp_path / "leaky"
    shutil.copytree(hand_built[0], leaky)
    public = read_json(leaky / "public.json")
    public["prompt_examples"][0] += org.unseal(leaky)["trigger"]  # a triggered "clean" example
    (leaky / "public.json").write_text(json.dumps(public))
    with pytest.raises(ConfigError, match="names its trigger"):
        blind.blind([leaky], tmp_path / "g5", tmp_path / "k5.json")
    pickled = tmp_path / "pickled"
    (pickled / "model").mkdir(parents=True)
    for name in ("public.json", "sealed/record.json"):
        (pickled / name).parent.mkdir(exist_ok=True)
        (pickled / name).write_text((hand_built[0] / name).read_text())
    (pickled / "model" / "pytorch_model.bin").write_bytes(b"PK")
    with pytest.raises(ConfigError, match="safetensors"):
        blind.blind([pickled], tmp_path / "g4", tmp_path / "k4.json")


def test_blind_command(hand_built, tmp_path, capsys):
    out, key = tmp_path / "game", tmp_path / "game.key.json"
    assert main(["blind", *map(str, hand_built), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert key.is_file() and str(key) in printed  # the default key lies beside --out
    assert not any(f.name in printed for f in hand_built)
    assert sorted(blind.read_key(key)) == sorted(p.name for p in out.iterdir())
    inside = ["--out", str(tmp_path / "g2"), "--key", str(tmp_path / "g2" / "key.json")]
    assert main(["blind", str(hand_built[0]), *inside]) == 2
    assert "inside --out" in capsys.readouterr().err


# --- the audit reads the public format and scores from the key ------------------------------------


def _audit(organisms, tmp_path, **kw):
    cfg = audit.AuditConfig(
        organisms=[str(f) for f in organisms],
        detectors=["behaviour"],
        n_items=4,
        max_new_tokens=6,
        threads=1,
        **kw,
    )
    return execute("audit", cfg, root=tmp_path)


def test_audit_of_plain_folders_scores_from_their_sealed_records(hand_built, tmp_path):
    res = _audit(hand_built, tmp_path)
    assert "auroc/behaviour/backdoor" in res.summary and res.summary["models"] == 4
    matrix = read_json(res.dir / "matrix.json")
    assert [m["control"] for m in matrix["models"]] == [False, False, True, True]
    assert "null/auroc/behaviour/backdoor" in res.summary  # two controls: a null row


def test_audit_of_blind_copies_detects_blind_and_scores_from_the_key(game, tmp_path, monkeypatch):
    made, key = game
    copies = [made.out / n for n in made.names]
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(real):
        def wrapped(path, *args, **kwargs):
            opened.append(str(path))
            return real(path, *args, **kwargs)

        return wrapped

    def read_key(path):
        opened.append("<read_key>")
        return real_read_key(path)

    real_read_key = blind.read_key
    monkeypatch.setattr(blind, "read_key", read_key)
    monkeypatch.setattr("builtins.open", spy(real_open))
    monkeypatch.setattr("io.open", spy(real_io_open))
    res = _audit(copies, tmp_path, key=str(made.key))
    monkeypatch.undo()
    matrix = read_json(res.dir / "matrix.json")
    truth = _truth(key)
    assert [m["control"] for m in matrix["models"]] == [truth[n]["control"] for n in made.names]
    assert "auroc/behaviour/backdoor" in res.summary
    # nothing under a copy but public.json and model/ was read; the key was hashed into the cache
    # key before the stage began (bytes only) and read only once the scores were written
    inside = [p for p in opened if str(made.out) in p]
    assert inside and all(p.endswith("/public.json") or "/model/" in p for p in inside), inside
    first_copy = min(i for i, p in enumerate(opened) if str(made.out) in p)
    scores = min(i for i, p in enumerate(opened) if "scores.jsonl" in p)
    key_reads = [i for i, p in enumerate(opened) if p in (str(made.key), "<read_key>")]
    assert opened.count("<read_key>") == 1
    assert key_reads and all(i < first_copy or i > scores for i in key_reads), opened
    with pytest.raises(ConfigError, match="key="):
        _audit(copies, tmp_path / "nokey")  # blind copies hold no record: the key is needed
