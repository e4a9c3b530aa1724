"""Resources robots share, in resource groups: Text (global variables), Credentials, Calendar, with a
value per scope (all robots, a robot group, one robot). A credential's password is write-only except
through the reveal endpoint, which needs ``credentials:reveal`` and is audited."""
