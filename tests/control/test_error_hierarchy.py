"""Every control-node error the CLI may print is an EdgeloopError and keeps its old bases."""

from __future__ import annotations

import pytest

from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.featurestore.errors import FeatureStoreError, UnknownViewError
from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.fleet.messages import PoisonMessage
from edgeloop_control.infra.mqtt import BrokerError
from edgeloop_control.infra.signing import SigningError
from edgeloop_control.infra.sitebridge import BridgeConfigError
from edgeloop_control.infra.workspace import WorkspaceError
from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.report.history import HistoryError
from edgeloop_control.report.validate import ReportDataError
from edgeloop_control.training.errors import TrainConfigError, TrainingError
from edgeloop_control.web.auth import TokenError

# (error class, the builtin base callers already catch it by, whether it is a config error)
CASES: list[tuple[type[Exception], type[Exception], bool]] = [
    (WorkspaceError, ValueError, True),
    (BridgeConfigError, ValueError, True),
    (TrainConfigError, ValueError, True),
    (TokenError, ValueError, True),
    (TrainingError, ValueError, False),
    (FeatureStoreError, Exception, False),
    (UnknownViewError, LookupError, False),
    (RegistryError, Exception, False),
    (SigningError, Exception, False),
    (BrokerError, Exception, False),
    (DeployError, ValueError, False),
    (HistoryError, ValueError, False),
    (ReportDataError, ValueError, False),
    (PoisonMessage, ValueError, False),
]


@pytest.mark.parametrize(("cls", "base", "config"), CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_one_hierarchy(cls: type[Exception], base: type[Exception], config: bool) -> None:
    assert issubclass(cls, EdgeloopError)
    assert issubclass(cls, base)  # `except ValueError` written before the hierarchy still works
    assert issubclass(cls, ConfigError) is config


def test_a_training_config_error_is_both_a_training_and_a_config_error() -> None:
    from edgeloop_control.training import TrainConfig

    with pytest.raises(TrainConfigError, match="holdout") as info:
        TrainConfig(target="y", holdout=1.5)
    assert isinstance(info.value, TrainingError) and isinstance(info.value, ConfigError)
