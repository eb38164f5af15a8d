// The real-chart Helm suite against Helm 4 (nixpkgs-unstable ships it): the same tests, HB_HELM=helm4.
process.env.HB_HELM = 'helm4';
await import('./helm-real-charts.test.ts');
