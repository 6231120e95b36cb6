"""What the tests share: database states, the drivers that walk a case, the personas."""
