"""Students on an archive and the honest baselines beside it: the protocol (``d3codec.evaluate``), student
training (evaluation.students) and DD-Ranking's metrics (evaluation.ranking)."""

from d3codec.evaluation.protocol import EvalProtocol, Evaluation, evaluate

__all__ = ["EvalProtocol", "Evaluation", "evaluate"]
