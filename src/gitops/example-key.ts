// The public half of the throwaway age key the repository's example tree is encrypted to. Its
// private half is public too (test/fixtures/age/test-key.txt), so anything encrypted to it is
// readable by anyone: `check-repo` refuses a tree that still uses it.
export const EXAMPLE_AGE_RECIPIENT = 'age1lv9phs5f6u3qp4yv000qdxcdfnlx7nhszes2lm2xf489z983qdws7z59sz';
