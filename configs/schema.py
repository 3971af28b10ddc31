"""One typed object per run: the frozen `ExperimentConfig` dataclass tree.

Defaults live here; YAML files under `configs/` hold overrides only (see
`configs/loader.py` for the resolution order). Field names follow keras-hub
(`vocabulary_size`, `num_layers`, `hidden_dim`, ...). TF-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from configs import features

# Allowed values of the string settings: `validate` checks them and every
# command's `--help` lists them (`configs.cli`).
# Values of `FinetuneConfig.pooling` once resolved.
POOLINGS = ("cls", "mean")
# Values of `ModelConfig.activation`.
ACTIVATIONS = ("gelu", "gelu_approximate", "relu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
CHOICES = {
    ("DataConfig", "sentence_task"): features.SENTENCE_TASKS,
    ("DataConfig", "random_tokens"): ("ordinary", "any"),
    ("PretrainConfig", "optimizer"): ("adamw", "lamb"),
    ("PretrainConfig", "precision"): PRECISIONS,
    ("PretrainConfig", "jit_compile"): ("auto", "true", "false"),
    ("PretrainConfig", "masking"): ("static", "dynamic"),
    ("PretrainConfig", "strategy"): STRATEGIES,
    ("PretrainConfig", "backend"): ("auto", "tensorflow", "jax"),
    ("FinetuneConfig", "precision"): PRECISIONS,
    ("FinetuneConfig", "pooling"): ("auto",) + POOLINGS,
    ("ModelConfig", "activation"): ACTIVATIONS,
}
# The `--set SECTION.KEY=VALUE` section of each config class.
SECTIONS = {
    "DataConfig": "data",
    "ModelConfig": "model",
    "PretrainConfig": "pretrain",
    "FinetuneConfig": "finetune",
    "ExportConfig": "export",
}


@dataclass(frozen=True)
class DataConfig:
    """How records are (or were) made. Checked against `metadata.json`."""

    max_seq_length: int = 128  # tokens per sequence incl. [CLS]/[SEP]/padding
    max_predictions_per_seq: int = 20  # masked-LM slots per sequence
    masked_lm_prob: float = 0.15  # fraction of tokens chosen for prediction
    mask_token_prob: float = 0.8  # chosen -> [MASK]
    random_token_prob: float = 0.1  # chosen -> random token (rest kept)
    short_seq_prob: float = 0.1  # chance of a shorter target length
    dupe_factor: int = 10  # duplication rounds (fresh pairs + masks each)
    sentence_task: str = "nsp"  # "nsp" (BERT) or "sop" (ALBERT)
    whole_word_mask: bool = False  # mask all wordpieces of a word together
    do_lower_case: bool = True  # must match the vocabulary (uncased: True)
    random_tokens: str = "ordinary"  # "ordinary" or "any" (bert's draw)
    seed: int = 12345  # every random choice derives from this
    bucket_size: int = 64  # documents per random-next-sentence bucket
    vocab_file: str = ""  # path of vocab.txt; empty = take it from the data

    def validate(self) -> None:
        _check(self.max_seq_length >= 8, "max_seq_length must be at least 8")
        _check(
            0.0 < self.masked_lm_prob < 1.0,
            "masked_lm_prob must be in (0, 1)",
        )
        _check(
            self.max_predictions_per_seq >= 1,
            "max_predictions_per_seq must be at least 1",
        )
        _check(
            self.max_predictions_per_seq <= self.max_seq_length - 3,
            "max_predictions_per_seq must be at most max_seq_length - 3",
        )
        _check(
            0.0 <= self.mask_token_prob
            and 0.0 <= self.random_token_prob
            and self.mask_token_prob + self.random_token_prob <= 1.0,
            "mask_token_prob + random_token_prob must be within [0, 1]",
        )
        _check(0.0 <= self.short_seq_prob <= 1.0, "short_seq_prob in [0, 1]")
        _check(self.dupe_factor >= 1, "dupe_factor must be at least 1")
        _check(
            self.sentence_task in features.SENTENCE_TASKS,
            f"sentence_task must be one of {features.SENTENCE_TASKS}",
        )
        _check(
            self.random_tokens in CHOICES[("DataConfig", "random_tokens")],
            "random_tokens must be 'ordinary' or 'any'",
        )
        _check(self.bucket_size >= 2, "bucket_size must be at least 2")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder sizes (defaults: BERT-Base)."""

    vocabulary_size: int = 30522  # rows of the token embedding
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads per block
    hidden_dim: int = 768  # width of every block
    intermediate_dim: int = 3072  # feed-forward inner width
    max_sequence_length: int = 512  # rows of the position embedding
    num_segments: int = 2  # token type vocabulary
    dropout: float = 0.1  # 0.0 makes runs bit-reproducible
    initializer_range: float = 0.02  # stddev of truncated-normal init
    # Feed-forward (and MLM transform) activation: gelu = exact erf GELU
    # (BERT's), gelu_approximate = the tanh form (Hugging Face's gelu_new /
    # gelu_pytorch_tanh), relu. An imported checkpoint sets it from its config.
    activation: str = "gelu"
    layer_norm_epsilon: float = 1e-12  # of every LayerNorm

    def validate(self) -> None:
        _check(self.num_layers >= 1, "num_layers must be at least 1")
        _check(
            self.hidden_dim % self.num_heads == 0,
            "hidden_dim must be divisible by num_heads",
        )
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(self.vocabulary_size >= 8, "vocabulary_size must be >= 8")
        _check(
            self.activation in ACTIVATIONS,
            f"model.activation must be one of {'|'.join(ACTIVATIONS)}",
        )
        _check(self.layer_norm_epsilon > 0, "layer_norm_epsilon must be > 0")


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining run settings."""

    steps: int = 1000  # optimizer steps (global)
    batch_size: int = 32  # GLOBAL batch size, split over replicas
    learning_rate: float = 1e-4  # peak, after warm-up
    warmup_steps: int = 100  # linear warm-up, then linear decay to 0
    weight_decay: float = 0.01  # AdamW/LAMB; not on LayerNorm or biases
    optimizer: str = "adamw"  # "adamw" or "lamb" (large batches)
    beta_1: float = 0.9  # Adam first-moment decay
    beta_2: float = 0.999  # Adam second-moment decay
    epsilon: float = 1e-6  # Adam denominator epsilon
    clipnorm: float = 1.0  # global-norm clipping
    # auto: bf16 on GPU/TPU and AMX CPUs (TF), float32 on CPU (JAX)
    precision: str = "auto"
    jit_compile: str = "auto"  # XLA-compile the train step; auto = backend choice
    masking: str = "static"  # static (as written) or dynamic (per step)
    save_every: int = 500  # checkpoint interval in steps
    log_every: int = 50  # metrics.jsonl / TensorBoard interval in steps
    keep_checkpoints: int = 3  # how many checkpoints to keep
    strategy: str = "default"  # default|one_device|mirrored|multi_worker|tpu
    tpu: str = ""  # TPU address / name for --strategy=tpu
    shuffle_buffer: int = 10000  # records
    seed: int = 0  # model init, shuffling, dynamic masks
    steps_per_loop: int = 1  # train steps per compiled call (tf.function / jit)
    backend: str = "auto"  # auto | tensorflow | jax; resolved from KERAS_BACKEND
    budget_minutes: float = 0.0  # >0: size steps + schedule to this wall budget
    warmup_fraction: float = 0.0  # >0: warm-up = this fraction of the steps
    # Weight of the NSP/SOP loss in the training loss; 0 = masked-LM only
    # (NSP/SOP records are still read; the sentence head is not trained).
    sentence_loss_weight: float = 1.0
    # Dynamic masking's own rate and slots per sequence, e.g. above the
    # records' 15% (budget recipes mask 25-40%); 0 = data.masked_lm_prob and
    # data.max_predictions_per_seq (the records'). Static masks are the records'.
    masking_rate: float = 0.0
    max_predictions_per_seq: int = 0  # dynamic masking's slots; 0 = the records'
    # Encoder dropout while pretraining; <0 = model.dropout. The run's
    # config.yaml keeps model.dropout, which fine-tuning from it takes.
    dropout: float = -1.0
    # Held-out records (a directory or globs, as --data), evaluated with their
    # own masks and dropout off; empty = DATA/eval when it has metadata.json;
    # none = no evaluation.
    eval_data: str = ""
    eval_every: int = 0  # steps between held-out evaluations; 0 = save_every
    eval_batches: int = 0  # batches of batch_size per evaluation; 0 = all records

    def validate(self) -> None:
        _check(self.steps >= 1, "steps must be at least 1")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.learning_rate > 0, "learning_rate must be positive")
        _check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        for name in ("optimizer", "precision", "jit_compile", "masking", "strategy"):
            allowed = CHOICES[("PretrainConfig", name)]
            _check(
                getattr(self, name) in allowed,
                f"pretrain.{name} must be one of {'|'.join(allowed)}",
            )
        _check(self.save_every >= 1, "save_every must be at least 1")
        _check(self.log_every >= 1, "log_every must be at least 1")
        _check(self.steps_per_loop >= 1, "steps_per_loop must be >= 1")
        _check(
            self.backend in CHOICES[("PretrainConfig", "backend")],
            "backend: auto|tensorflow|jax (set KERAS_BACKEND to choose)",
        )
        _check(self.budget_minutes >= 0, "budget_minutes must be >= 0")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)")
        _check(self.sentence_loss_weight >= 0, "sentence_loss_weight must be >= 0")
        _check(self.dropout < 1.0, "pretrain.dropout must be < 1 (<0 = model's)")
        _check(0 <= self.masking_rate < 1, "pretrain.masking_rate must be in [0, 1)")
        _check(
            self.max_predictions_per_seq >= 0,
            "pretrain.max_predictions_per_seq must be >= 0",
        )
        _check(self.eval_every >= 0, "eval_every must be >= 0")
        _check(self.eval_batches >= 0, "eval_batches must be >= 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Sentence classification fine-tuning settings."""

    epochs: int = 3  # passes over the training rows (GLUE recipe: 2-4)
    batch_size: int = 32  # GLOBAL batch size
    # Peak AdamW rate, a number or auto: auto takes what the published
    # recipes found for the encoder's width: 3e-5 from hidden 768 up
    # (BERT-Base/Large: Devlin et al.'s GLUE grid {2,3,5}e-5), 1e-4 from 256
    # to 767 (BERT-Mini/Small/Medium, MiniLM-L6: Turc et al.'s sweep tops out
    # at 1e-4), 3e-4 below 256 (BERT-Tiny). See `finetune_learning_rate`.
    learning_rate: str = "auto"  # auto | a positive number
    warmup_proportion: float = 0.1  # of total steps
    weight_decay: float = 0.01  # AdamW; not on LayerNorm or biases
    max_seq_length: int = 128  # tokens incl. [CLS]/[SEP]
    dropout: float = 0.1  # before the classification layer
    # What the classification layer reads: cls = BERT's pooler (dense + tanh
    # on [CLS]); mean = the mean of the last layer over real tokens (what
    # sentence-transformers checkpoints were trained for; their pooler is
    # untrained). auto = the checkpoint's own (its 1_Pooling/config.json),
    # mean from our runs pretrained MLM-only (their [CLS] is untrained),
    # else cls. Recorded resolved, and baked into the SavedModel.
    pooling: str = "auto"  # auto | cls | mean
    labels: tuple = ()  # label values as strings; empty = learn from train
    text_column: str = "sentence"  # TSV/CSV column (JSONL key) of the text
    text_b_column: str = ""  # set for sentence-pair tasks
    label_column: str = "label"  # TSV/CSV column (JSONL key) of the label
    seed: int = 0  # model init, dropout, shuffling
    seeds: int = 1  # repeat with seeds seed..seed+N-1, report mean ± std
    # auto: bfloat16 on GPUs/TPUs and bf16 CPUs (AMX), else float32. The
    # variables stay float32 either way, so exports are float32.
    precision: str = "auto"  # float32 or mixed precision (see the comment above)
    # Batches of similar length, trimmed to their longest row (rounded up to
    # 8): ~2.5x less padding on SST-2; batch order is still shuffled.
    group_by_length: bool = True
    max_steps: int = 0  # stop after this many steps (0 = full epochs)

    def validate(self) -> None:
        _check(self.epochs >= 1, "epochs must be at least 1")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(
            self.learning_rate == "auto" or _positive_number(self.learning_rate),
            f"finetune.learning_rate must be auto or a positive number, got "
            f"{self.learning_rate!r}",
        )
        _check(0 <= self.warmup_proportion <= 1, "warmup_proportion in [0,1]")
        _check(self.max_seq_length >= 8, "max_seq_length must be at least 8")
        _check(self.seeds >= 1, "seeds must be at least 1")
        _check(self.max_steps >= 0, "max_steps must be >= 0")
        _check(
            self.pooling in ("auto",) + POOLINGS,
            "finetune.pooling: auto|cls|mean",
        )
        _check(
            self.precision in PRECISIONS,
            f"finetune.precision must be one of {'|'.join(PRECISIONS)}",
        )


def _positive_number(value) -> bool:
    try:
        return 0 < float(value) < float("inf")
    except (TypeError, ValueError):
        return False


# (smallest hidden width, peak fine-tuning learning rate), widest first.
FINETUNE_LEARNING_RATES = ((768, 3e-5), (256, 1e-4), (0, 3e-4))


def finetune_learning_rate(setting, hidden_dim: int) -> float:
    """`finetune.learning_rate` as a float: the number, or auto's by width.

    Args:
        setting: "auto" or a positive number (a float or its string).
        hidden_dim: int, the encoder's width.
    """
    if setting != "auto":
        return float(setting)
    return next(r for w, r in FINETUNE_LEARNING_RATES if hidden_dim >= w)


@dataclass(frozen=True)
class ExportConfig:
    """Serving SavedModel settings."""

    max_seq_length: int = 128  # longer inputs are truncated
    label_names: tuple = ()  # optional names for the labels


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole run: one object, dumped next to every output."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> "ExperimentConfig":
        """Cross-field checks; raises ConfigError with one clear line."""
        self.data.validate()
        self.model.validate()
        self.pretrain.validate()
        self.finetune.validate()
        # The position table may be longer than the data (BERT keeps 512
        # rows and pretrains on 128); it may never be shorter.
        _check(
            self.data.max_seq_length <= self.model.max_sequence_length,
            f"data.max_seq_length ({self.data.max_seq_length}) exceeds "
            f"model.max_sequence_length ({self.model.max_sequence_length})",
        )
        _check(
            self.finetune.max_seq_length <= self.model.max_sequence_length,
            "finetune.max_seq_length exceeds model.max_sequence_length",
        )
        return self

    def replace(self, **sections) -> "ExperimentConfig":
        return dataclasses.replace(self, **sections)


class ConfigError(ValueError):
    """A config or flag problem; its message is one line for the user."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
