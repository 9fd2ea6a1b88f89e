"""GLUE files as download_glue_data.py and the original GLUE zips leave them, byte for byte in
their structure: header lines (or none), column counts, encodings, line breaks.

What the real files hold (checked against the script and the zips' contents):
- MRPC train.tsv / dev.tsv: the script copies the header line of msr_paraphrase_train.txt as it
  reads it (io.open, utf-8), so the header starts with that file's UTF-8 BOM:
  '\\ufeffQuality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String'; sentences hold bare double quotes.
- CoLA train.tsv / dev.tsv: no header; 4 columns: source, label, the original mark ('*' or
  empty), sentence.
- SST-2: header 'sentence\\tlabel'; sentences end with a space before the tab.
- QQP: header 'id qid1 qid2 question1 question2 is_duplicate'; a few questions hold a newline,
  so their example spans two lines of the file.
- MNLI train.tsv: 12 columns (..., sentence1, sentence2, label1, gold_label); dev_matched.tsv and
  dev_mismatched.tsv: 16 (label1..label5, gold_label); the parse columns hold double quotes.
- STS-B: 10 columns, score last ('5.000'); sentences with an unmatched double quote.
- QNLI / RTE: labels 'entailment' / 'not_entailment'; WNLI: 0 / 1.
"""

from __future__ import annotations

import pytest

from quantlib.data import load_glue
from quantlib.tasks import TASKS

BOM = b"\xef\xbb\xbf"
MRPC_HEADER = BOM + b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROWS = (
    b'1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of '
    b'deliberately distorting his evidence .\tReferring to him as only " the witness " , Amrozi '
    b"accused his brother of deliberately distorting his evidence .\n"
    b"0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in "
    b"1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold "
    b"it to Safeway for $ 1.8 billion in 1998 .\n"
)
COLA = (b"gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        b"gj04\t1\t\tOne more pseudo generalization and I'm giving up.\n"
        b"gj04\t0\t*\tThey drank the pub.\n")
SST2 = (b"sentence\tlabel\nhide new secretions from the parental units \t0\n"
        b"that loves its characters and communicates something rather beautiful about human "
        b"nature \t1\n")
QQP = (b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
       b"133273\t213221\t213222\tHow is the life of a math student? Could you describe your own "
       b"experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n"
       b"402555\t536040\t536041\tHow do I control my horny emotions?\n"
       b"Please help\tHow do you control your horniness?\t1\n"
       b"360472\t364011\t490273\tWhat causes stool color to change to yellow?\tWhat can cause "
       b"stool to come out as little balls?\t0\n")
MNLI_COLUMNS = (b"index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
                b"\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2")
MNLI_TRAIN = (MNLI_COLUMNS + b"\tlabel1\tgold_label\n"
              b"0\t31193\t31193n\tgovernment\t( ( Conceptually ( cream skimming ) ) ( ( has ( ( "
              b"( two ( basic dimensions ) ) - ) ( ( product and ) geography ) ) ) . ) )\t( ( ( "
              b"Product and ) geography ) ( ( are ( what ( make ( cream ( skimming work ) ) ) ) ) "
              b". ) )\t(ROOT (S (NP (JJ Conceptually) (NN cream) (NN skimming)) (VP (VBZ has)) "
              b"(. .)))\t(ROOT (S (NP (NN Product)) (VP (VBP are)) (. .)))\tConceptually cream "
              b"skimming has two basic dimensions - product and geography.\tProduct and geography "
              b"are what make cream skimming work. \tneutral\tneutral\n"
              b"1\t101457\t101457e\ttelephone\t( you ( ( know ( during ( ( ( the season ) and ) ( "
              b"i guess ) ) ) ) ) )\t( You ( ( ( ( lose ( the things ) ) ... ) ) ) )\t(ROOT (S "
              b"(NP (PRP you)) (VP (VBP know))))\t(ROOT (S (NP (PRP You)) (VP (VBP lose))))\tyou "
              b'know during the season and i guess at at your level uh you lose them to the next '
              b'level if if they decide to recall the the parent team the Braves decide to call '
              b'to recall a guy from triple A then a double A guy goes up to replace him and a '
              b'single A guy goes up to replace him\tYou lose the things to the following level '
              b'if the people recall.\tentailment\tentailment\n')
MNLI_DEV = (MNLI_COLUMNS + b"\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            b'0\t63735\t63735n\tslate\t( ( The ( new rights ) ) ( are ( nice enough ) ) )\t( '
            b'Everyone ( ( really likes ) ( the ( newest benefits ) ) ) )\t(ROOT (S (NP (DT The) '
            b'(JJ new) (NNS rights)) (VP (VBP are) (ADJP (JJ nice) (RB enough)))))\t(ROOT (S (NP '
            b'(NN Everyone)) (VP (ADVP (RB really)) (VBZ likes))))\tThe new rights are nice enough'
            b'\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral'
            b'\tneutral\tneutral\n'
            b'1\t91383\t91383c\tgovernment\t( ( This site ) ( includes ( ( a list ) ) ) )\t( ( '
            b'The ( Government Executive ) ) ( ( is n\'t ) ( about ( the web ) ) ) )\t(ROOT (S (NP '
            b'(DT This) (NN site)) (VP (VBZ includes))))\t(ROOT (S (NP (DT The)) (VP (VBZ is))))\t'
            b'This site includes a list of all award winners and a searchable database of '
            b'Government Executive articles.\tThe Government Executive articles housed on the '
            b'website are not able to be searched.\tcontradiction\tcontradiction\tcontradiction\t'
            b'contradiction\tcontradiction\tcontradiction\n'
            b'2\t755\t755e\ttelephone\t( ( uh ( i ( ( do n\'t ) ( know ) ) ) ) )\t( I ( ( like '
            b'( him ( for ( the most part ) ) ) ) ) )\t(ROOT (S (INTJ (UH uh)) (NP (PRP i))))\t('
            b'ROOT (S (NP (PRP I)) (VP (VBP like))))\tuh i don\'t know i i have mixed emotions '
            b'about him uh sometimes i like him but at the same times i love to see somebody beat '
            b'him\tI like him for the most part, but would still enjoy seeing someone beat him.\t'
            b'entailment\tentailment\tentailment\tentailment\tentailment\tentailment\n')
STSB = (b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        b"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air "
        b"plane is taking off.\t5.000\n"
        b'1\tmain-news\theadlines\t2013\t0042\tnone\tnone\t"Obama signs the bill.\tObama '
        b'signs budget bill" into law.\t3.800\n')
QNLI = (b"index\tquestion\tsentence\tlabel\n"
        b"0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it and most "
        b"of the seasons that followed, Digimon Tamers takes a darker and more realistic approach "
        b"to its story.\tnot_entailment\n"
        b"1\tWhich missile batteries often have individual launchers several kilometres from one "
        b"another?\tWhen MANPADS is operated by specialists, batteries may have several dozen "
        b"teams deploying separately in small sections.\tentailment\n")
RTE = (b"index\tsentence1\tsentence2\tlabel\n"
       b"0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found "
       b"in Iraq.\tnot_entailment\n"
       b"1\tA place of sorrow, after Pope John Paul II died, became a place of celebration.\tPope "
       b"Benedict XVI is the new leader of the Roman Catholic Church.\tentailment\n")
WNLI = (b"index\tsentence1\tsentence2\tlabel\n"
        b"0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot "
        b"had a hole.\t1\n"
        b"1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tJohn "
        b"is so short.\t1\n")

# task -> ({file: bytes}, train examples, first train (text_a, text_b, label), dev labels)
FILES = {
    "mrpc": ({"train.tsv": MRPC_HEADER + MRPC_ROWS, "dev.tsv": MRPC_HEADER + MRPC_ROWS}, 2,
             ('Amrozi accused his brother , whom he called " the witness " , of deliberately '
              "distorting his evidence .", 'Referring to him as only " the witness " , Amrozi '
              "accused his brother of deliberately distorting his evidence .", 1), [1, 0]),
    "cola": ({"train.tsv": COLA, "dev.tsv": COLA}, 3,
             ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
             [1, 1, 0]),
    "sst2": ({"train.tsv": SST2, "dev.tsv": SST2}, 2,
             ("hide new secretions from the parental units ", None, 0), [0, 1]),
    "qqp": ({"train.tsv": QQP, "dev.tsv": QQP}, 3,
            ("How is the life of a math student? Could you describe your own experiences?",
             "Which level of prepration is enough for the exam jlpt5?", 0), [0, 1, 0]),
    "mnli": ({"train.tsv": MNLI_TRAIN, "dev_matched.tsv": MNLI_DEV,
              "dev_mismatched.tsv": MNLI_DEV}, 2,
             ("Conceptually cream skimming has two basic dimensions - product and geography.",
              "Product and geography are what make cream skimming work. ", 1), [1, 2, 0]),
    "stsb": ({"train.tsv": STSB, "dev.tsv": STSB}, 2,
             ("A plane is taking off.", "An air plane is taking off.", 5.0), [5.0, 3.8]),
    "qnli": ({"train.tsv": QNLI, "dev.tsv": QNLI}, 2,
             ("When did the third Digimon series begin?", "Unlike the two seasons before it and "
              "most of the seasons that followed, Digimon Tamers takes a darker and more "
              "realistic approach to its story.", 1), [1, 0]),
    "rte": ({"train.tsv": RTE, "dev.tsv": RTE}, 2,
            ("No Weapons of Mass Destruction Found in Iraq Yet.",
             "Weapons of Mass Destruction Found in Iraq.", 1), [1, 0]),
    "wnli": ({"train.tsv": WNLI, "dev.tsv": WNLI}, 2,
             ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
              "The carrot had a hole.", 1), [1, 1]),
}


def write(root, files: dict[str, bytes], crlf: bool = False):
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data.replace(b"\n", b"\r\n") if crlf else data)
    return root


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_real_glue_files(tmp_path, name, crlf):
    files, n_train, first, dev_labels = FILES[name]
    task = TASKS[name]
    assert set(files) == {task.tsv.train_file, *task.tsv.eval_files.values()}
    data = load_glue(task, "unused", str(write(tmp_path / task.glue_dir, files, crlf)))
    assert len(data["train"]) == n_train
    row = data["train"][0]
    assert (row["text_a"], row.get("text_b"), row["label"]) == first
    assert list(data["validation"]["label"]) == pytest.approx(dev_labels)
    if name == "mnli":
        assert list(data["validation_mm"]["label"]) == dev_labels
    for split in data.values():  # nothing of a header or a line break leaks into the text
        texts = list(split["text_a"])
        texts += list(split["text_b"]) if "text_b" in split.column_names else []
        for text in texts:
            assert "\ufeff" not in text and "\r" not in text


def test_mrpc_header_really_starts_with_a_bom(tmp_path):
    root = write(tmp_path / "MRPC", FILES["mrpc"][0])
    assert (root / "train.tsv").read_text(encoding="utf-8").startswith("\ufeffQuality\t")
    assert len(load_glue(TASKS["mrpc"], "unused", str(root))["train"]) == 2


def test_qqp_question_broken_by_a_newline_is_one_example(tmp_path):
    data = load_glue(TASKS["qqp"], "unused", str(write(tmp_path / "QQP", FILES["qqp"][0])))
    assert data["train"][1]["text_a"] == "How do I control my horny emotions?\nPlease help"
    assert data["train"][1]["text_b"] == "How do you control your horniness?"
    assert data["train"]["label"] == [0, 1, 0]


def test_mnli_rows_without_a_gold_label_are_skipped(tmp_path):
    dev = MNLI_DEV.replace(b"\tneutral\tneutral\n", b"\tneutral\t-\n", 1)
    files = {**FILES["mnli"][0], "dev_matched.tsv": dev}
    data = load_glue(TASKS["mnli"], "unused", str(write(tmp_path / "MNLI", files)))
    assert data["validation"]["label"] == [2, 0]
    assert data["validation_mm"]["label"] == [1, 2, 0]


def test_not_utf8_names_the_file(tmp_path):
    files = {**FILES["rte"][0], "dev.tsv": RTE.replace(b"Iraq Yet", b"Iraq \xe9t\xe9")}
    with pytest.raises(ValueError, match=r"dev.tsv: not UTF-8"):
        load_glue(TASKS["rte"], "unused", str(write(tmp_path / "RTE", files)))
