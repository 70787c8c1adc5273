"""Third-party code shipped inside notifier, each package with its licence and a README naming its origin."""
