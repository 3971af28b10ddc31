"""Row splitting rules shared by fine-tuning and the data/scoring jobs."""

from configs import labelled_text


def test_long_field_under_the_line_limit_is_one_field():
    # 300 KiB: past the csv module's 128 KiB default, under our 1 MiB lines.
    text = "word " * 60_000
    for fmt, sep in (("tsv", "\t"), ("csv", ",")):
        assert labelled_text.split_line(f"{text}{sep}1", fmt) == [text, "1"]
        out = labelled_text.parse_row(
            f"{text}{sep}1".encode(),
            fmt=fmt,
            columns=["sentence", "label"],
            text_column="sentence",
            text_b_column="",
            label_column="label",
        )
        assert out[0] != "bad", out
