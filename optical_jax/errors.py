"""The one exception type for user mistakes (bad config, bad input file, bad flag): the CLI prints it and exits 2."""


class UserError(Exception):
  """A mistake the user can fix; its message is one line naming the file, line or field at fault."""
