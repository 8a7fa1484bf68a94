"""``temperance eval``: measure what samplers do to quality and diversity, offline, on any model.

Two instruments and one protocol, each in its own module:

- `score`: **exact** scoring without generation. One teacher-forced pass over held-out text; every
  configuration of the grid is applied to the same logits (true prefix as history) and gives, per
  position, accuracy ``q(y)``, collision ``sum q^2``, the Brier score, the truncation miss rate,
  the kept-set size and entropy. Hundreds of configurations cost one forward pass.
- `generate`: k samples per prompt and configuration, with common random numbers (seeds per
  (prompt, sample) shared across configurations), scored by `metrics` (accuracy on verifiable
  tasks, NLL under the raw model, distinct-n, self-BLEU, gzip ratio, MiniLM distance,
  NoveltyBench's distinct_k / utility_k, a slop index).
- `calm`: CALM's likelihood-free temperature (`temperance.implicit`) measured the same way, its
  batch size N against softmax temperature.
- `stats` + `protocol`: the min-p critique's protocol — one shared grid (`grid`), Best-of-N over
  configurations at equal N, paired bootstrap intervals over prompts, Holm correction — and the
  issue's trends checked against the numbers.

Plumbing: `data` (shipped and installed prompt sets, held-out text, user JSONL), `cells` (content-
hash cells, resume, local worker processes or Ray), `plan` (grid -> jobs), `rows` (cells -> one row
per configuration), `figures` and `report` (PNGs and one self-contained HTML page), `cli`.

    temperance eval score --quick && temperance eval generate --quick && temperance eval report
"""
