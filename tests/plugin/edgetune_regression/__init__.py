"""A task plug-in that lives outside edgetune, for the tests: regression of one
number per image (here, how bright a part is). It is the proof that a task is
new files plus one registration: this package registers itself through the
`edgetune.tasks` entry point (`regression = edgetune_regression:TASK`) and edits
nothing in edgetune."""

from edgetune.runtime.tasks import TaskEntry

TASK = TaskEntry(runtime="edgetune_regression.runtime:RegressionSession", build="edgetune_regression.build:Regression")
