"""The paper's programs: agents (a role's LM, a phase's Signature, a speaker), the three
scenarios, the judge, the turn guards, the agents' wire format, and the registry that builds
them from a run's settings."""
