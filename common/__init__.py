"""Plumbing every app uses, at the bottom of the house: configuration parsing (`config`),
database helpers (`db`), Ethereum helpers (`eth`), the uint256 model field (`fields`), the
operators' console building blocks (`console`) and the single-flight lock of periodic jobs
(`singleflight`). Nothing here imports an app of the project."""
