"""Registers the vertical job types (imported by ``cleanroom.jobtypes``)."""

from cleanroom.jobtypes.base import register
from cleanroom.jobtypes.vertical.jobs import VerticalLogRegJob, VerticalPredictJob

register(VerticalLogRegJob())
register(VerticalPredictJob())
