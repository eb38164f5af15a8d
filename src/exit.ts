// Exit codes of the CLI, documented in README; the NixOS module's contract.nix repeats two of them.
export const EXIT = { ok: 0, failed: 1, planChanges: 2, conflicts: 4, usage: 64, badSettings: 65, locked: 75 } as const;
