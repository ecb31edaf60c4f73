"""Local meta-learning algorithms, one per file, resolved by name through :data:`LEARNERS`.

Each module of this package registers its learner; :data:`LEARNERS` imports them all on first
lookup, so a new learner is one new file.
"""

from fedmeta.learners.base import LEARNERS, Learner, LearnerConfig, Params

__all__ = ["LEARNERS", "Learner", "LearnerConfig", "Params"]
