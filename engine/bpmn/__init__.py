"""Everything that touches SpiffWorkflow's parser, specs and serializer."""
