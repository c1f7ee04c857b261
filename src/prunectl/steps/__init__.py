"""The pipeline's steps (their order is :data:`prunectl.project.state.STEPS`): each reads only
its recipe sections and earlier steps' files."""
