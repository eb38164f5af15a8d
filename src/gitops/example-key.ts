// The age recipient the shipped example secrets of manifests/argocd-homelab are encrypted to.
// Its private half is public (it lives under test/, for the demo and the tests), so anything
// encrypted to it is readable by anyone: a tree that still lists it in `.sops.yaml` or in a
// file's sops metadata has not been made the user's own yet, and `check-repo` refuses it.
export const EXAMPLE_AGE_RECIPIENT = 'age1lv9phs5f6u3qp4yv000qdxcdfnlx7nhszes2lm2xf489z983qdws7z59sz';

/** Whether a recipient (from `.sops.yaml` or a file's `sops.age[].recipient`) is the example key. */
export function isExampleRecipient(recipient: string): boolean {
  return recipient.trim() === EXAMPLE_AGE_RECIPIENT;
}
