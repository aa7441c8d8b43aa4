"""Deploying a built bundle to a cloud service (SageMaker). boto3 is imported only where a deploy runs."""
from __future__ import annotations
